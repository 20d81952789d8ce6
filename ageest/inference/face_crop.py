"""Faces in ordinary photos: the largest face found by OpenCV's bundled Haar cascade
(``opencv-python-headless<5``, extra ``faces``: the cascade file ships with OpenCV 4, which 5
dropped; nothing is downloaded), cropped with a margin like UTKFace's aligned crops. Without
OpenCV, or when no face is found, the whole image is used and the caller is told which."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

#: the crop's margin on each side, as a share of the detected box (UTKFace's crops keep the hair
#: and chin: about 40% around the frontal-face box)
MARGIN = 0.4
CASCADE = "haarcascade_frontalface_default.xml"


def _cascade():
    try:
        import cv2
    except ImportError:
        return None
    classifier = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
    return None if classifier.empty() else (cv2, classifier)


def largest_face(image: np.ndarray, detector=None) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)`` of the largest face in an RGB ``uint8 (H, W, 3)`` image, or ``None``."""
    detector = detector or _cascade()
    if detector is None:
        raise ImportError("face detection needs OpenCV 4: pip install 'ageest[faces]'")
    cv2, classifier = detector
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    side = max(24, min(image.shape[:2]) // 10)
    boxes = classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(side, side))
    if len(boxes) == 0:
        return None
    x, y, w, h = max(boxes, key=lambda b: int(b[2]) * int(b[3]))
    return int(x), int(y), int(w), int(h)


def crop_box(box: tuple[int, int, int, int], width: int, height: int,
             margin: float = MARGIN) -> tuple[int, int, int, int]:
    """The square crop around a face box with ``margin`` on each side, inside the image
    (``left, top, right, bottom``).

    >>> crop_box((40, 40, 20, 20), 100, 100)
    (32, 32, 68, 68)
    >>> crop_box((0, 0, 20, 20), 100, 100)
    (0, 0, 28, 28)
    """
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    return left, top, right, bottom


def crop_faces(paths: list[Path], folder: Path) -> tuple[list[Path], list[str]]:
    """For each image, the file to predict on (a PNG crop of its largest face in ``folder``, or
    the image itself) and what it is (``detected face``, ``no face found: whole image``, or
    ``whole image: OpenCV missing ...``)."""
    from PIL import Image

    detector = _cascade()
    if detector is None:
        why = ("whole image: OpenCV is not installed (pip install 'ageest[faces]' for "
               "--detect-faces)")
        warnings.warn(why, stacklevel=2)
        return list(paths), [why] * len(paths)
    fed, what = [], []
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        box = largest_face(np.asarray(rgb), detector)
        if box is None:
            fed.append(path)
            what.append("no face found: whole image")
            continue
        crop = folder / f"{i:05d}.png"
        rgb.crop(crop_box(box, *rgb.size)).save(crop)  # PNG: lossless, decoded as the run does
        fed.append(crop)
        what.append("detected face")
    return fed, what
