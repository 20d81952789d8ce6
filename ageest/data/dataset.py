"""The torch Dataset over a dataset table, and the image transforms.

Images are decoded once into a ``uint8`` tensor cache (``(3, H, W)`` per image; 12 KiB at
64 px, so FG-NET's 1,002 images take 12 MiB), and the per-item transform runs on that uint8
tensor with :mod:`torchvision.transforms.v2`, converting to float only at the end. Epochs
therefore never re-decode a JPEG, and the per-item cost at 64 px is tens of microseconds.

Transforms (:func:`build_transforms`):

``light``
    CPU variant at a configurable ``size``: random translation by up to ``size // 16`` pixels
    with edge replication (= random crop of the edge-padded image) and horizontal flip for
    training; nothing but the float conversion for evaluation. Implemented as one gather
    (:class:`RandomShiftFlip`, 11-16 us per 64 px image) because torchvision's edge-padded
    ``RandomCrop`` + flip took 50 us with one torch thread and 0.26-5 ms with two on a shared
    CPU (its replicate padding goes parallel on a tiny tensor) -- as much as a small CNN's
    training step per image.
``paper``
    The official FG-NET script's geometry (``main_FGNET.py``): training resizes the whole image
    to 256x256 (scaled as ``size * 256 / 227`` when ``size`` < 224), takes a random crop of
    ``size`` (the scripts use 227) and flips with p = 0.5 (``RandomApply([flip], p=0.5)``,
    the same distribution); evaluation resizes the whole image to ``size`` x ``size``, no
    crop. ImageNet normalisation only when ``normalize=True`` (the official FG-NET script does
    not normalise; its CLAP2016 script does).
``clap``
    The official CLAP2016 script's (``main_CLAP.py``): flip, random affine (rotation 10
    degrees, shear 16) and colour jitter 0.1 on brightness, contrast, saturation and hue on
    the image *before* the resize to 256x256, then the random crop; evaluation as ``paper``.
    The training cache keeps each image's aspect ratio (its shorter side at the resize side,
    see :func:`cache_spec`), so the affine acts on the image's own geometry, as at the
    original resolution (rotation and shear commute with a uniform scale; only the
    interpolation differs), and the anisotropic 256x256 resize comes after it.

Resizes go through PIL's bilinear filter while decoding (the official code also resizes PIL
images, bilinear), so a cached image is what the official ``Resize`` gives, up to PIL's
JPEG draft-mode shortcut for large JPEGs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ageest.data.integrity import DataError, bomb_problem, printable_path, size_problem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORMS = ("light", "paper", "clap")


def paper_resize(size: int) -> int:
    """Resize side used before the random crop of the ``paper``/``clap`` transforms.

    >>> paper_resize(227), paper_resize(224), paper_resize(64)
    (256, 256, 72)
    """
    return 256 if size >= 224 else int(round(size * 256 / 227))


FITS = ("square", "short_side")


def cache_spec(name: str, *, size: int = 64, train: bool = True) -> tuple[int, str]:
    """How :class:`AgeDataset` should decode and cache images for transform ``name``:
    ``(side, fit)``; ``fit="square"`` resizes the whole image to ``side`` x ``side`` (what the
    transform's own resize would do, which then is a no-op), ``"short_side"`` scales it
    uniformly so that its shorter side is ``side`` (the ``clap`` training path, whose
    augmentation runs before the square resize).

    >>> cache_spec("light", size=64), cache_spec("paper", size=227)
    ((64, 'square'), (256, 'square'))
    >>> cache_spec("paper", size=227, train=False), cache_spec("clap", size=227)
    ((227, 'square'), (256, 'short_side'))
    """
    if name not in TRANSFORMS:
        raise ValueError(f"transform {name!r}: expected one of {TRANSFORMS}")
    if name == "light" or not train:
        return size, "square"
    return paper_resize(size), "short_side" if name == "clap" else "square"


def cache_size(name: str, *, size: int = 64) -> int:
    """Side of the training cache of transform ``name`` (:func:`cache_spec`).

    >>> cache_size("light", size=64), cache_size("paper", size=227)
    (64, 256)
    """
    return cache_spec(name, size=size)[0]


class ResizeIfNeeded(torch.nn.Module):
    """Resize ``(..., H, W)`` to ``size x size`` (antialiased), returning the input untouched
    when it already has that size (the cached images usually do)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-2:] == (self.size, self.size):
            return img
        return v2.functional.resize(img, [self.size, self.size], antialias=True)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class RandomShiftFlip(torch.nn.Module):
    """Random translation with edge replication plus random horizontal flip, in one gather.

    Equivalent to ``v2.RandomCrop(size, padding=pad, padding_mode="edge")`` followed by
    ``v2.RandomHorizontalFlip()`` on a ``(C, H, W)`` image (same output for the same offsets),
    at ~10-20 us per 64 px image instead of 0.05-5 ms: the ``(2 pad + 1)^2 x 2`` possible
    outcomes are flat gather indices, built once per image size and reused. Randomness comes
    from torch's global generator, so ``torch.manual_seed`` and DataLoader worker seeding
    apply.

    Parameters
    ----------
    pad : int
        Largest shift in pixels (the padding of the equivalent random crop).
    flip_p : float
        Probability of a horizontal flip.
    """

    def __init__(self, pad: int, flip_p: float = 0.5) -> None:
        super().__init__()
        self.pad = int(pad)
        self.flip_p = float(flip_p)
        self._index: dict[tuple[int, int, int, int, bool], np.ndarray] = {}

    def _flat_index(self, h: int, w: int, dy: int, dx: int, flip: bool) -> np.ndarray:
        key = (h, w, dy, dx, flip)
        idx = self._index.get(key)
        if idx is None:
            # Output pixel (i, j) reads input (clamp(i + dy), clamp(j + dx)): a crop of the
            # edge-padded image at offset (pad + dy, pad + dx); flipping reverses the columns.
            iy = np.clip(np.arange(h) + dy, 0, h - 1)
            ix = np.clip(np.arange(w) + dx, 0, w - 1)
            if flip:
                ix = ix[::-1]
            idx = self._index[key] = (iy[:, None] * w + ix[None, :]).ravel()  # (H*W,)
        return idx

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        c, h, w = img.shape
        r = torch.rand(3).tolist()  # one RNG call per item: dy, dx, flip
        p = self.pad
        dy = min(int(r[0] * (2 * p + 1)), 2 * p) - p
        dx = min(int(r[1] * (2 * p + 1)), 2 * p) - p
        idx = self._flat_index(h, w, dy, dx, r[2] < self.flip_p)
        # numpy's take on the (C, H*W) view costs a few us; torch's index_select ~10 us here.
        out = np.take(img.numpy().reshape(c, h * w), idx, axis=1)  # (C, H*W)
        return torch.from_numpy(out).view(c, h, w)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, flip_p={self.flip_p}"


class ToFloat(torch.nn.Module):
    """``uint8`` -> ``float32`` in [0, 1] (what ``v2.ToDtype(float32, scale=True)`` does for
    uint8, without its dispatch overhead)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype == torch.uint8:
            return img.to(torch.float32).mul_(1.0 / 255.0)
        return img.to(torch.float32)


def build_transforms(
    name: str, *, size: int = 64, train: bool, normalize: bool = False,
    resize: int | None = None,
) -> v2.Compose:
    """Build the image transform applied per item to a ``uint8`` tensor ``(3, H, W)``.

    Parameters
    ----------
    name : {"light", "paper", "clap"}
        Which augmentation family (see the module docstring).
    size : int
        Output side in pixels (the crop size for ``paper``/``clap``: 224 or 227 for the paper).
    train : bool
        Random augmentation (training) or the deterministic evaluation path.
    normalize : bool
        Apply ImageNet mean/std normalisation after scaling to [0, 1].
    resize : int, optional
        Override the resize side of ``paper``/``clap`` (default :func:`paper_resize`).

    Returns
    -------
    torchvision.transforms.v2.Compose
        Maps ``uint8 (3, H, W)`` to ``float32 (3, size, size)`` in [0, 1] (or normalised).

    Examples
    --------
    >>> t = build_transforms("light", size=32, train=True)
    >>> t(torch.zeros(3, 32, 32, dtype=torch.uint8)).shape
    torch.Size([3, 32, 32])
    """
    if name not in TRANSFORMS:
        raise ValueError(f"transform {name!r}: expected one of {TRANSFORMS}")
    if size < 8:
        raise ValueError(f"size={size}: expected at least 8 pixels")
    steps: list[Callable] = []
    if name == "light":
        steps.append(ResizeIfNeeded(size))  # no-op when the cache is already size x size
        if train:
            steps.append(RandomShiftFlip(max(1, size // 16)))
        steps.append(ToFloat())
    else:
        side = resize if resize is not None else paper_resize(size)
        if side < size:
            raise ValueError(f"resize={side} is smaller than the crop size={size}")
        if train:
            if name == "clap":  # main_CLAP.py: flip, affine, jitter, then Resize, RandomCrop
                steps += [v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, shear=16),
                          v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1,
                                         hue=0.1),
                          ResizeIfNeeded(side), v2.RandomCrop(size)]
            else:  # main_FGNET.py: flip (p 0.5), Resize((256, 256)), RandomCrop
                steps += [ResizeIfNeeded(side), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
        else:  # both scripts: Resize((size, size)) of the whole image, no crop
            steps.append(ResizeIfNeeded(size))
        steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB, *scaled*: PIL's own ``convert("RGB")`` clips 16-bit and
    32-bit grey (``I;16``, ``I``) to 255, so a 16-bit PNG turns near-white. Those are scaled by
    their bit depth (16-bit: /257, so 65535 -> 255); float images (``F``) in [0, 1] are
    scaled by 255; palette, grey, grey+alpha, RGBA (alpha dropped) and CMYK go through PIL's
    conversion, which is exact for 8-bit data.

    >>> import numpy as np
    >>> im = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    >>> np.asarray(to_rgb8(im))[0, :, 0].tolist()
    [0, 128, 255]
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and arr.size and arr.max() <= 1.0:
            scale = 255.0
        elif im.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            scale = 255.0 / 65535.0
        else:
            scale = 1.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return im.convert("RGB")


def face_box(extent: tuple[float, float, float, float], margin: float
             ) -> tuple[int, int, int, int]:
    """The square crop around a face's landmark extent ``(x0, y0, x1, y1)``: centred on it, its
    side the extent's larger side times ``margin`` (so 1.4 adds 20 % on each side of the wider
    direction), in whole pixels. Parts outside the photo are filled black by the crop.

    >>> face_box((10.0, 20.0, 30.0, 60.0), 1.5)
    (-10, 10, 50, 70)
    """
    x0, y0, x1, y1 = extent
    side = max(x1 - x0, y1 - y0) * margin
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    return left, top, left + round(side), top + round(side)


def decode_image(path: str, size: int | None = None, fit: str = "square",
                 box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Decode an image file to a ``uint8`` tensor ``(3, H, W)``, resized to ``size`` x ``size``
    (``fit="square"``) or uniformly to a shorter side of ``size`` (``fit="short_side"``; never
    enlarged). ``box``: crop ``(left, top, right, bottom)`` in the photo's pixels first (a face
    from its landmarks, :func:`face_box`).

    Raises :class:`~ageest.data.integrity.DataError` naming the file when it cannot be decoded.
    """
    if fit not in FITS:
        raise ValueError(f"fit={fit!r}: expected one of {FITS}")
    try:
        with Image.open(path) as im:
            problem = size_problem(im.size)  # before any pixel is decoded
            if problem is not None:
                raise DataError(f"{printable_path(path)}: {problem}; replace the file with a "
                                "smaller image, or raise AGEEST_MAX_IMAGE_PIXELS")
            target = None
            if box is not None:
                im = to_rgb8(im).crop(box)  # outside the photo: black
            if size is not None:
                w, h = im.size
                if fit == "square":
                    target = (size, size)
                elif min(w, h) > size:
                    scale = size / min(w, h)
                    target = (max(size, round(w * scale)), max(size, round(h * scale)))
            if target is not None and box is None and im.format == "JPEG":
                im.draft("RGB", target)  # DCT-domain downscale: decodes big JPEGs faster
            im = to_rgb8(im)
            if target is not None and im.size != target:
                im = im.resize(target, Image.BILINEAR, reducing_gap=2.0)
            arr = np.asarray(im, dtype=np.uint8)  # (H, W, 3)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{printable_path(path)}: {bomb_problem(exc)}; replace the file with a "
                        "smaller image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{printable_path(path)}: cannot decode image ({exc}); replace the file, or load the dataset "
            "with on_bad='skip' to skip such files (every image is decoded once at load)"
        ) from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


class AgeDataset(Dataset):
    """Images and ages of a dataset table, decoded once into a uint8 cache.

    Parameters
    ----------
    df : DataFrame
        A dataset table (columns ``path`` and ``age`` at least; see :mod:`ageest.data`).
        Positions ``0..len(df)-1`` are the item indices (pass ``df.iloc[fold.train]``, or the
        full table with a :class:`torch.utils.data.Subset`).
    start_age : int
        Smallest age of the label space; ages below it are an error. The item's label is the
        **age itself** (not the class index ``age - start_age``), so losses and metrics decide
        how to index.
    transform : callable, optional
        Applied per item to the ``uint8 (3, H, W)`` tensor (e.g. :func:`build_transforms`);
        ``None`` only scales to float in [0, 1].
    cache : bool
        Keep decoded images in memory (decoded lazily on first access, or all at once with
        :meth:`preload`). Call :meth:`preload` before creating a multi-worker DataLoader so
        forked workers share the cache instead of each filling its own.
    size : int, optional
        Decode every image to ``size`` x ``size`` (see :func:`cache_size`); ``None`` keeps the
        stored size (then all images must share it for batching).

    Items
    -----
    ``(image, age, index)``: ``image`` float32 ``(3, H, W)``, ``age`` int64 scalar tensor,
    ``index`` int (the row position in ``df``, to join predictions back to the table).
    """

    def __init__(self, df: pd.DataFrame, *, start_age: int, transform: Callable | None = None,
                 cache: bool = True, size: int | None = None, fit: str = "square",
                 boxes: list[tuple[int, int, int, int]] | None = None) -> None:
        missing = [c for c in ("path", "age") if c not in df.columns]
        if missing:
            raise ValueError(f"AgeDataset: the table lacks column(s) {missing}")
        self.paths: list[str] = df["path"].astype(str).tolist()
        ages = df["age"].to_numpy(dtype=np.int64)
        if len(ages) and ages.min() < start_age:
            bad = df.loc[df["age"] < start_age, "path"].tolist()[:5]
            raise ValueError(f"AgeDataset: ages below start_age={start_age}, e.g. {bad}; "
                             "load the dataset with its declared age range")
        self.ages = torch.from_numpy(ages.copy())  # (N,) int64
        self.start_age = int(start_age)
        self.transform = transform
        self.size = size
        self.fit = fit
        self.cache = cache
        # per item, the crop taken before resizing (a face from its landmarks), or None
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        if len(self.boxes) != len(self.paths):
            raise ValueError(f"AgeDataset: {len(self.boxes)} boxes for {len(self.paths)} images")
        self._images: list[torch.Tensor | None] = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def image_uint8(self, index: int) -> torch.Tensor:
        """The decoded ``uint8 (3, H, W)`` image (from the cache when filled)."""
        img = self._images[index]
        if img is None:
            img = decode_image(self.paths[index], self.size, self.fit, self.boxes[index])
            if self.cache:
                self._images[index] = img
        return img

    def preload(self, num_threads: int | None = None) -> AgeDataset:
        """Decode every image now (PIL releases the GIL, so threads help); returns ``self``."""
        if not self.cache:
            return self
        todo = [i for i, im in enumerate(self._images) if im is None]
        workers = num_threads or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, img in zip(todo, pool.map(lambda j: decode_image(
                    self.paths[j], self.size, self.fit, self.boxes[j]), todo), strict=True):
                self._images[i] = img
        return self

    def cache_bytes(self) -> int:
        """Bytes held by the decoded-image cache."""
        return sum(im.numel() for im in self._images if im is not None)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img = self.image_uint8(index)
        if self.transform is not None:
            out = self.transform(img)
        else:
            out = img.to(torch.float32).div_(255.0)
        if out.dtype == torch.uint8:  # a user transform without ToDtype
            out = out.to(torch.float32).div_(255.0)
        return out, self.ages[index], index


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TRANSFORMS", "AgeDataset", "RandomShiftFlip",
           "ResizeIfNeeded", "ToFloat", "build_transforms",
           "cache_size", "cache_spec", "decode_image", "face_box", "paper_resize", "to_rgb8"]
