"""The embedded default: a procedural face-ageing dataset (numpy + PIL, nothing downloaded).

Faces are drawn so that age is *learnable but ambiguous*, for the reasons it is in real photos:

* **Identity** per subject: skin tone, face width, eye spacing and colour, hair colour and
  style, sex-linked traits (receding hairline, stubble), the age at which hair greys, and a
  personal **ageing rate** (log-normal around 1) so that some people look older than their
  years. The same subject photographed at several ages keeps these.
* **Age cues**: child proportions (large cranium and forehead, eyes low on the head and large,
  short nose, round face) that grow into adult ones by ~18; after ~25, wrinkles (forehead lines,
  crow's feet, nasolabial folds, under-eye bags) whose number and contrast grow with the
  *appearance* age; greying and receding hair; sagging (drooping mouth corners, jowls, heavier
  eyelids); age spots; thinning lips.
* **Nuisances**: pose (yaw moves the features, roll rotates the head), scale and position
  jitter, lighting direction and strength, colour cast, background colour and gradient, blur,
  sensor noise and JPEG quality.
* **Apparent age** (CLAP-style data): 20-45 simulated raters guess the appearance age with an
  error whose std grows with age, giving a per-image mean and std as in CLAP2016.

:func:`write_fgnet_like` and :func:`write_clap_like` write the FG-NET and APPA-REAL layouts,
read back by the real loaders in :mod:`ageest.data.loaders`. Both are deterministic from
``seed`` (same seed, same bytes: identities, ages and nuisances come from per-image
:class:`numpy.random.Generator` streams). Each image is drawn at twice its size and
box-downsampled (anti-aliasing); 1,000 images at 64 px take a few seconds on one core.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

# Skin tones from light to dark (RGB); an identity interpolates between neighbours.
_SKIN = np.array([[241, 208, 186], [224, 178, 148], [198, 146, 110], [160, 110, 78],
                  [116, 78, 56], [86, 58, 42]], dtype=np.float64)
_HAIR = np.array([[25, 20, 18], [60, 40, 28], [105, 72, 45], [175, 140, 90], [205, 175, 120],
                  [150, 70, 35]], dtype=np.float64)
_EYES = np.array([[60, 40, 25], [35, 25, 20], [70, 100, 140], [80, 110, 75], [110, 85, 50]],
                 dtype=np.float64)
_GREY = np.array([205.0, 205.0, 208.0])


@dataclass(frozen=True)
class Identity:
    """One synthetic person: traits fixed across the ages at which they are photographed."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    eye: tuple[int, int, int]
    face_width: float  # multiplies the head's half-width
    eye_spacing: float  # multiplies the inter-eye distance
    nose_width: float
    mouth_width: float
    hair_style: int  # 0 short, 1 medium, 2 long
    male: bool
    grey_onset: float  # appearance age at which half the hair is grey
    recede: float  # 0..1, how strongly the hairline recedes with age
    rate: float  # personal ageing rate: appearance years per calendar year after 20

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Identity:
        """Draw an identity from ``rng``."""
        t = rng.uniform(0, len(_SKIN) - 1)
        lo = int(t)
        skin = _SKIN[lo] + (t - lo) * (_SKIN[min(lo + 1, len(_SKIN) - 1)] - _SKIN[lo])
        skin = skin + rng.normal(0, 6, 3)
        # Darker skin -> darker hair and eyes more likely (keeps identities plausible).
        hair_p = np.array([3, 3, 2, 1, 1, 0.6]) if t > 2.5 else np.array([1, 2, 2, 1.5, 1, 0.6])
        hair = _HAIR[rng.choice(len(_HAIR), p=hair_p / hair_p.sum())] + rng.normal(0, 8, 3)
        eye = _EYES[rng.choice(len(_EYES))]
        male = bool(rng.random() < 0.5)
        return cls(
            skin=tuple(int(v) for v in np.clip(skin, 40, 250)),
            hair=tuple(int(v) for v in np.clip(hair, 5, 240)), eye=tuple(int(v) for v in eye), face_width=float(rng.uniform(0.9, 1.1)),
            eye_spacing=float(rng.uniform(0.9, 1.12)), nose_width=float(rng.uniform(0.8, 1.25)),
            mouth_width=float(rng.uniform(0.85, 1.2)),
            hair_style=int(rng.choice(3, p=[0.45, 0.3, 0.25] if male else [0.15, 0.35, 0.5])),
            male=male, grey_onset=float(rng.normal(50, 7)),
            recede=float(rng.uniform(0.3, 1.0) if male else rng.uniform(0.0, 0.25)),
            rate=float(np.exp(rng.normal(0, 0.18))),
        )


def appearance_age(age: float, rate: float) -> float:
    """Age a face *looks*: children grow on a near-universal schedule, adults age at ``rate``.

    >>> appearance_age(10, 1.3) < appearance_age(10, 1.0) + 1.0
    True
    >>> round(appearance_age(60, 1.2), 1)  # 20 * 1.03 + 40 * 1.2
    68.6
    """
    if age <= 20:
        return age * (1 + 0.15 * (rate - 1))
    return 20 * (1 + 0.15 * (rate - 1)) + (age - 20) * rate


def _mix(a, b, t):
    t = float(np.clip(t, 0.0, 1.0))
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))


def _scale(c, f):
    return tuple(int(np.clip(round(x * f), 0, 255)) for x in c)


def render_face(
    ident: Identity, app_age: float, rng: np.random.Generator, size: int = 64, *,
    face_scale: float = 1.0, occlude: bool = False,
) -> Image.Image:
    """Draw one face of ``ident`` looking ``app_age`` years old, with random nuisances.

    Parameters
    ----------
    ident : Identity
        Who is photographed.
    app_age : float
        Appearance age (see :func:`appearance_age`).
    rng : numpy.random.Generator
        Source of the nuisances (pose, lighting, background, blur, noise, wrinkle placement).
    size : int
        Output side in pixels (square RGB image).
    face_scale : float
        Size of the face in the frame (1 = a tight face crop; ~0.6 = a wider photo).
    occlude : bool
        Cover part of the face (used to plant "bad" training images for ignore lists).

    Returns
    -------
    PIL.Image.Image
        RGB, ``size x size``.
    """
    s = 2 * size  # draw at 2x, box-downsample at the end (anti-aliasing)
    a = float(max(app_age, 0.0))
    g = min(a / 18.0, 1.0) ** 0.8  # growth 0 (newborn) .. 1 (adult proportions)
    old = max(a - 25.0, 0.0)  # adult ageing years (drive wrinkles, sagging)
    sag = min(old / 50.0, 1.0)
    skin = ident.skin
    line = _scale(skin, 0.72 - 0.12 * min(old / 40, 1))  # wrinkle colour: darker with age

    # --- pose and framing (nuisances) ---
    yaw = float(rng.normal(0, 0.12))
    roll = float(rng.normal(0, 6))
    fs = face_scale * float(rng.uniform(0.92, 1.06))
    cx = s * (0.5 + rng.normal(0, 0.025))
    cy = s * (0.52 + rng.normal(0, 0.02))

    # --- head geometry (child: round, big cranium; adult: longer lower face) ---
    rx = s * 0.30 * fs * ident.face_width * (1.02 - 0.06 * g)
    ry = s * 0.36 * fs * (0.90 + 0.12 * g)
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    hair_grey = 1 / (1 + math.exp(-(a - ident.grey_onset) / 5.0))
    hair = _mix(ident.hair, _GREY, hair_grey)
    # Babies have little hair: blend hair towards skin.
    hair_amount = min(0.25 + a / 4.0, 1.0)
    hair = _mix(skin, hair, hair_amount)

    # Long hair behind the head.
    if ident.hair_style == 2 and a > 3:
        d.rounded_rectangle([cx - rx * 1.12, cy - ry * 0.9, cx + rx * 1.12, cy + ry * 0.95],
                            radius=int(rx * 0.5), fill=hair)
    # Neck and ears.
    d.rectangle([cx - rx * 0.42, cy + ry * 0.6, cx + rx * 0.42, s], fill=_scale(skin, 0.92))
    ear_y = cy + ry * (0.12 - 0.1 * g)
    for side in (-1, 1):
        ex = cx + side * rx * 0.98 - yaw * rx * 0.3
        d.ellipse([ex - rx * 0.12, ear_y - ry * 0.14, ex + rx * 0.12, ear_y + ry * 0.14],
                  fill=_scale(skin, 0.95))
    # Hair cap (top of head), drawn before the face so the hairline is the face's edge.
    recede = ident.recede * min(max(a - 22, 0) / 35.0, 1.0)
    cap_h = ry * (1.12 if ident.hair_style else 1.06)
    d.ellipse([cx - rx * 1.06, cy - cap_h, cx + rx * 1.06, cy + ry * 0.35], fill=hair)
    # Face: head ellipse plus a jaw; jowls widen the jaw with sagging.
    d.ellipse([cx - rx, cy - ry * (0.95 - 0.15 * recede), cx + rx, cy + ry], fill=skin)
    jaw_w = rx * (0.78 + 0.12 * sag)
    d.ellipse([cx - jaw_w, cy + ry * 0.2, cx + jaw_w, cy + ry * (1.0 + 0.05 * sag)], fill=skin)
    # Hairline/fringe: lowered bangs for children and some adults; baldness shows scalp.
    fringe_y = cy - ry * (0.55 + 0.35 * recede)
    if recede < 0.6:
        d.chord([cx - rx * 1.0, cy - ry * 1.05, cx + rx * 1.0, fringe_y + ry * 0.35],
                180, 360, fill=hair)
    else:  # bald crown: temple tufts only
        for side in (-1, 1):
            d.ellipse([cx + side * rx * 0.92 - rx * 0.18, cy - ry * 0.55,
                       cx + side * rx * 0.92 + rx * 0.18, cy + ry * 0.1], fill=hair)

    # --- features: child eyes low and large, adult eyes near mid-head ---
    fx = cx + yaw * rx * 0.55  # features shift with yaw
    eye_y = cy + ry * (0.20 - 0.24 * g)
    eye_dx = rx * 0.40 * ident.eye_spacing * (0.92 + 0.08 * g)
    eye_r = s * 0.052 * fs * (1.45 - 0.45 * g)
    for side in (-1, 1):
        ex = fx + side * eye_dx
        squeeze = 1 - 0.35 * max(side * yaw, 0) * 3  # far eye narrower under yaw
        w, h = eye_r * squeeze, eye_r * 0.62
        d.ellipse([ex - w, eye_y - h, ex + w, eye_y + h], fill=(245, 245, 240))
        ir = eye_r * 0.55
        d.ellipse([ex - ir * squeeze, eye_y - ir, ex + ir * squeeze, eye_y + ir], fill=ident.eye)
        pr = ir * 0.45
        d.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=(15, 12, 12))
        # Heavier upper eyelid with age (sagging): skin covers the top of the eye.
        lid = h * (0.25 + 0.8 * sag)
        d.rectangle([ex - w * 1.1, eye_y - h * 1.2, ex + w * 1.1, eye_y - h + lid], fill=skin)
        # Brow (greys with the hair).
        by = eye_y - h - eye_r * (0.7 + 0.2 * g) + ry * 0.04 * sag
        d.line([ex - w * 1.1, by + side * 0, ex + w * 1.1, by - eye_r * 0.15],
               fill=_mix(ident.hair, _GREY, hair_grey), width=max(1, int(s * 0.018)))
        # Crow's feet and under-eye bags.
        n_crow = int(min(old / 8.0, 4))
        for k in range(n_crow):
            ox = ex + side * w * 1.15
            oy = eye_y + (k - n_crow / 2) * h * 0.45
            d.line([ox, oy, ox + side * eye_r * 0.7, oy + (k - 1.5) * h * 0.25],
                   fill=line, width=1)
        if old > 8:
            d.arc([ex - w, eye_y, ex + w, eye_y + h * (1.6 + sag)], 20, 160, fill=line,
                  width=1 + int(old > 30))

    # Nose grows with age (and keeps growing slowly in old age).
    nose_top = eye_y + eye_r * 0.4
    nose_len = ry * (0.16 + 0.16 * g + 0.05 * sag)
    nw = rx * 0.12 * ident.nose_width * (0.8 + 0.2 * g)
    d.line([fx + yaw * rx * 0.2, nose_top, fx + yaw * rx * 0.35, nose_top + nose_len],
           fill=_scale(skin, 0.8), width=max(1, int(s * 0.012)))
    d.ellipse([fx - nw, nose_top + nose_len - nw * 0.6, fx + nw, nose_top + nose_len + nw * 0.6],
              fill=_scale(skin, 0.82))
    # Mouth: corners droop and lips thin with age.
    my = nose_top + nose_len + ry * (0.12 + 0.06 * g)
    mw = rx * 0.30 * ident.mouth_width * (0.8 + 0.2 * g)
    lip_h = ry * 0.05 * (1.2 - 0.6 * sag)
    lip = _mix(skin, (170, 60, 70), 0.55 - 0.25 * sag)
    droop = ry * 0.05 * sag
    d.polygon([(fx - mw, my + droop), (fx, my - lip_h), (fx + mw, my + droop), (fx, my + lip_h)],
              fill=lip)
    # Nasolabial folds and marionette lines.
    if old > 5:
        wdt = 1 + int(old > 30)
        for side in (-1, 1):
            d.line([fx + side * nw * 1.3, nose_top + nose_len, fx + side * mw * 1.25,
                    my + droop * 0.5], fill=line, width=wdt)
            if sag > 0.3:
                d.line([fx + side * mw * 1.05, my + droop, fx + side * mw * 1.2, my + ry * 0.22],
                       fill=line, width=1)
    # Forehead lines.
    n_fore = int(min(old / 9.0, 5))
    for k in range(n_fore):
        yy = eye_y - eye_r * 2.0 - k * ry * 0.07
        if yy < cy - ry * (0.85 - 0.3 * recede):
            break
        jitter = rng.normal(0, ry * 0.01)
        d.arc([fx - rx * 0.55, yy - ry * 0.04 + jitter, fx + rx * 0.55, yy + ry * 0.06 + jitter],
              200, 340, fill=line, width=1)
    # Rosy cheeks for children, stubble for adult men, age spots for the elderly.
    if a < 12:
        pink = _mix(skin, (235, 120, 120), 0.35 * (1 - a / 12))
        for side in (-1, 1):
            px = fx + side * rx * 0.55
            d.ellipse([px - rx * 0.16, my - ry * 0.2, px + rx * 0.16, my - ry * 0.04], fill=pink)
    if ident.male and a > 17:
        n = int(40 * min((a - 17) / 8, 1))
        pts_x = fx + rng.uniform(-jaw_w * 0.8, jaw_w * 0.8, n)
        pts_y = rng.uniform(my - ry * 0.05, cy + ry * 0.95, n)
        d.point(list(zip(pts_x.tolist(), pts_y.tolist(), strict=True)),
                fill=_mix(skin, hair, 0.45))
    if old > 25:
        n = int((old - 25) * 1.2)
        pts_x = cx + rng.uniform(-rx * 0.8, rx * 0.8, n)
        pts_y = cy + rng.uniform(-ry * 0.6, ry * 0.7, n)
        d.point(list(zip(pts_x.tolist(), pts_y.tolist(), strict=True)), fill=_scale(skin, 0.75))
    if occlude:
        ox, oy = rng.uniform(0.3, 0.7, 2) * s
        d.rectangle([ox - s * 0.25, oy - s * 0.2, ox + s * 0.25, oy + s * 0.2],
                    fill=tuple(int(v) for v in rng.integers(0, 255, 3)) + (255,))

    layer = layer.rotate(roll, resample=Image.BILINEAR, center=(cx, cy))

    # --- background: colour + vertical gradient ---
    bg0 = rng.uniform(40, 220, 3)
    bg1 = np.clip(bg0 + rng.normal(0, 40, 3), 0, 255)
    t = np.linspace(0, 1, s)[:, None, None]  # (s, 1, 1)
    bg = (bg0 * (1 - t) + bg1 * t) * np.ones((1, s, 1))  # (s, s, 3)
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    img.paste(layer, (0, 0), layer)
    img = img.reduce(2)  # (size, size)

    # --- lighting, colour cast, blur, noise (on the final-size array) ---
    blur = float(rng.uniform(0, 0.9)) if rng.random() < 0.5 else 0.0
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32)  # (size, size, 3)
    theta = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0, 0.35)
    yy, xx = np.mgrid[-1:1:complex(0, size), -1:1:complex(0, size)]
    shade = 1 + strength * (np.cos(theta) * xx + np.sin(theta) * yy) / 1.4  # (size, size)
    gain = rng.uniform(0.8, 1.15) * rng.uniform(0.93, 1.07, 3)  # brightness x colour cast
    arr = arr * shade[..., None] * gain
    arr += rng.normal(0, rng.uniform(0, 6), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _jpeg_bytes(img: Image.Image, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
    return buf.getvalue()


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent stream per (seed, keys): one image's draws never shift another's."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


# --------------------------------------------------------------------------------------------
# FG-NET-like


def fgnet_like_table(seed: int = 0, n_subjects: int = 82, n_images: int = 1002,
                     max_age: int = 69) -> pd.DataFrame:
    """Subjects and ages of an FG-NET-like dataset (no images).

    Ages are skewed young as in FG-NET (most photos are of children and young adults: each
    subject is photographed from childhood up to an age drawn from a long-tailed law); every
    subject has at least 6 photos; the youngest photo is 0 and the oldest ``max_age``; two
    photos of the same subject at the same age get ``a``/``b`` suffixes as in the release.

    Returns
    -------
    DataFrame
        ``subject`` (``"001"``...), ``age``, ``suffix``, ``file_name``.
    """
    if n_images < 6 * n_subjects:
        raise ValueError(f"n_images={n_images} must be at least 6 x n_subjects={n_subjects}")
    rng = _rng(seed, 1)
    lo = np.where(rng.random(n_subjects) < 0.5, 0, rng.integers(1, 10, n_subjects))
    hi = np.minimum(lo + 8 + rng.gamma(1.6, 14.0, n_subjects).astype(int), max_age)
    hi[int(np.argmax(hi))] = max_age  # the release spans 0..69
    lo[0] = 0
    counts = 6 + rng.multinomial(n_images - 6 * n_subjects,
                                 (hi - lo + 4) / (hi - lo + 4).sum())
    rows = []
    for i in range(n_subjects):
        n, span = int(counts[i]), int(hi[i] - lo[i]) + 1
        hi_i = int(hi[i])
        while 2 * span < n:  # at most two photos per age (a/b suffix)
            hi_i = min(hi_i + 5, max_age)
            span = hi_i - int(lo[i]) + 1
        # Young-skewed ages within the subject's span; endpoints always present.
        w = (1.0 - np.arange(span) / (span + 2)) ** 1.2
        chosen = [int(lo[i]), hi_i] if n >= 2 else [int(lo[i])]
        cnt = {a: chosen.count(a) for a in chosen}
        while len(chosen) < n:
            a = int(lo[i] + rng.choice(span, p=w / w.sum()))
            if cnt.get(a, 0) < 2 and (cnt.get(a, 0) == 0 or rng.random() < 0.08):
                chosen.append(a)
                cnt[a] = cnt.get(a, 0) + 1
        subject = f"{i + 1:03d}"
        for a in sorted(set(chosen)):
            suffixes = [""] if cnt[a] == 1 else ["a", "b"]
            for suf in suffixes:
                rows.append({"subject": subject, "age": a, "suffix": suf,
                             "file_name": f"{subject}A{a:02d}{suf}.JPG"})
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _staging(root: Path):
    """Yield a sibling temp folder to write into, then rename it to ``root``.

    An interrupted or failed generation removes its temp folder and never leaves ``root``
    looking complete. If another process published ``root`` first (same seed and size, hence
    the same bytes), its copy is kept and ours discarded.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists() and not any(root.iterdir()):
        root.rmdir()
    try:
        os.rename(tmp, root)  # atomic on one file system
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root.is_dir() and any(root.iterdir())):
            raise FileExistsError(f"{root}: cannot publish the generated dataset ({exc}); "
                                  "remove the folder and retry") from exc


GENERATOR_VERSION = 1
MARKER = ".ageest-synthetic.json"  # hidden: loaders list it in ignored_files, not as bad input


def _write_marker(folder: Path, **params) -> None:
    import json

    text = json.dumps({"generator_version": GENERATOR_VERSION, **params}, indent=2) + "\n"
    (folder / MARKER).write_text(text, encoding="utf-8")


def read_marker(root: str | os.PathLike) -> dict | None:
    """Parameters a synthetic folder was generated with (``None`` if it has no marker)."""
    import json

    path = Path(root) / MARKER
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _check_target(root: Path) -> None:
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose an empty or new folder")


def _check_size(size: int) -> None:
    if not 16 <= size <= 448:
        raise ValueError(f"size={size}: expected 16-448 pixels")


def write_fgnet_like(
    root: str | os.PathLike, seed: int = 0, size: int = 64, *, n_subjects: int = 82,
    n_images: int = 1002,
) -> Path:
    """Write an FG-NET-format folder of synthetic faces: ``root/NNNAxx[a|b].JPG``.

    82 subjects and 1,002 images with ages 0-69 by default (the release's manifest, so
    :func:`~ageest.data.load_fgnet` reads it without a warning); each subject keeps one
    :class:`Identity` across its photos, and the label is the *real* age while the drawing
    follows the subject's appearance age (personal ageing rate).

    Parameters
    ----------
    root : path-like
        Target folder; must not exist or be empty. Written via a temp folder and a rename.
    seed : int
        Everything (identities, ages, nuisances) follows from it.
    size : int
        Image side in pixels (16-448; 64 by default, up to 224 for the paper's models).
    n_subjects, n_images : int
        Dataset size.

    Returns
    -------
    Path
        ``root``.
    """
    _check_size(size)
    root = Path(root)
    _check_target(root)
    table = fgnet_like_table(seed, n_subjects, n_images)
    idents = {s: Identity.sample(_rng(seed, 2, int(s))) for s in table["subject"].unique()}
    with _staging(root) as tmp:
        for k, rec in enumerate(table.itertuples(index=False)):
            ident = idents[rec.subject]
            rng = _rng(seed, 3, k)
            img = render_face(ident, appearance_age(rec.age, ident.rate), rng, size)
            (tmp / rec.file_name).write_bytes(_jpeg_bytes(img, rng))
        _write_marker(tmp, kind="fgnet-like", seed=seed, size=size, n_subjects=n_subjects,
                      n_images=n_images)
    return root


# --------------------------------------------------------------------------------------------
# CLAP-like (APPA-REAL layout)

CLAP_SPLIT_FRACTIONS = {"train": 4113 / 7591, "valid": 1500 / 7591, "test": 1978 / 7591}


def rate_apparent_age(app_age: float, rng: np.random.Generator,
                      n_raters: int | None = None) -> tuple[float, float, int]:
    """Simulated raters' guesses of an appearance age: (mean, std, number of ratings).

    Each rater has a personal bias and an error whose std grows with age (people misjudge old
    faces by more years than young ones), as in CLAP2016's annotations.

    >>> m, s, n = rate_apparent_age(30.0, np.random.default_rng(0))
    >>> 20 <= n <= 45 and abs(m - 30) < 5 and s > 0
    True
    """
    n = int(rng.integers(20, 46)) if n_raters is None else int(n_raters)
    sigma = 1.0 + 0.11 * app_age
    guesses = app_age + rng.normal(0, 0.35 * sigma, n) + rng.normal(0, sigma, n)
    guesses = np.clip(guesses, 0, 100)  # CLAP2016's label range is 0-100
    return float(guesses.mean()), float(guesses.std(ddof=1)), n


def _clap_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    """Real ages like APPA-REAL's: mostly 15-50, some children, a tail of older people."""
    comp = rng.choice(3, size=n, p=[0.13, 0.69, 0.18])
    ages = np.where(comp == 0, rng.uniform(0, 15, n),
                    np.where(comp == 1, rng.normal(30, 9, n), rng.uniform(45, 92, n)))
    return np.clip(np.rint(ages), 0, 95).astype(int)


def write_clap_like(
    root: str | os.PathLike, seed: int = 0, size: int = 64, *, n_images: int = 2000,
    face_crops: bool = True, bad_train_fraction: float = 0.01,
) -> Path:
    """Write an APPA-REAL-format folder of synthetic faces.

    Layout: ``root/{train,valid,test}/NNNNNN.jpg`` (a wider photo), ``NNNNNN.jpg_face.jpg``
    (the face crop, when ``face_crops``), ``root/gt_avg_{split}.csv`` with ``file_name,
    num_ratings, apparent_age_avg, apparent_age_std``, and ``root/ignore_list.csv`` naming the
    planted bad (occluded) training images, which :func:`~ageest.data.load_clap2016` drops from
    training when given that list. Splits follow CLAP2016's proportions (4113:1500:1978). Each
    image is a different person (the release has no identities).

    Parameters
    ----------
    root : path-like
        Target folder; must not exist or be empty.
    seed : int
        Everything follows from it.
    size : int
        Image side in pixels (16-448).
    n_images : int
        Total number of images (default 2,000: small enough for a CPU profile).
    face_crops : bool
        Also write the ``_face.jpg`` crops.
    bad_train_fraction : float
        Share of training images drawn occluded and listed in ``ignore_list.csv``.

    Returns
    -------
    Path
        ``root``.
    """
    _check_size(size)
    if n_images < 30:
        raise ValueError(f"n_images={n_images}: need at least 30 for three splits")
    root = Path(root)
    _check_target(root)
    rng = _rng(seed, 10)
    ages = _clap_ages(rng, n_images)
    n_train = int(round(n_images * CLAP_SPLIT_FRACTIONS["train"]))
    n_valid = int(round(n_images * CLAP_SPLIT_FRACTIONS["valid"]))
    split_of = ["train"] * n_train + ["valid"] * n_valid + ["test"] * (n_images - n_train
                                                                       - n_valid)
    n_bad = int(round(bad_train_fraction * n_train))
    bad = set(rng.choice(n_train, size=n_bad, replace=False).tolist()) if n_bad else set()
    with _staging(root) as tmp:
        tables: dict[str, list[dict]] = {k: [] for k in CLAP_SPLIT_FRACTIONS}
        ignore = []
        for k in range(n_images):
            split = split_of[k]
            (tmp / split).mkdir(exist_ok=True)
            r = _rng(seed, 11, k)
            ident = Identity.sample(r)
            # Keep the appearance within CLAP2016's 0-100 label range even for fast agers.
            app = min(appearance_age(float(ages[k]), ident.rate), 96.0)
            mean, std, n_r = rate_apparent_age(app, r)
            name = f"{k:06d}.jpg"
            # Draw once at a wide framing; the face crop is the central part of that drawing.
            wide = render_face(ident, app, r, 2 * size if face_crops else size,
                               face_scale=0.62 if face_crops else 1.0, occlude=k in bad)
            if face_crops:
                c = 2 * size * 0.19  # the face spans the central ~62% of the wide image
                crop = wide.crop((int(c), int(c), int(2 * size - c), int(2 * size - c)))
                (tmp / split / f"{name}_face.jpg").write_bytes(
                    _jpeg_bytes(crop.resize((size, size), Image.BILINEAR), r))
                wide = wide.reduce(2)
            (tmp / split / name).write_bytes(_jpeg_bytes(wide, r))
            tables[split].append({"file_name": name, "num_ratings": n_r,
                                  "apparent_age_avg": round(mean, 6),
                                  "apparent_age_std": round(std, 6), "real_age": int(ages[k])})
            if k in bad:
                ignore.append(name)
        for split, rows in tables.items():
            pd.DataFrame(rows).to_csv(tmp / f"gt_avg_{split}.csv", index=False)
        pd.DataFrame({"file_name": sorted(ignore)}).to_csv(tmp / "ignore_list.csv", index=False)
        _write_marker(tmp, kind="clap-like", seed=seed, size=size, n_images=n_images,
                      face_crops=face_crops, bad_train_fraction=bad_train_fraction)
    return root


# --------------------------------------------------------------------------------------------
# figure


def face_samples(ages, n_subjects: int = 4, seed: int = 0, size: int = 96
                 ) -> tuple[list[list[np.ndarray]], list[float]]:
    """Faces of ``n_subjects`` identities at each calendar age: ``(faces, rates)`` with
    ``faces[i][j]`` the (size, size, 3) uint8 image of subject ``i`` at ``ages[j]`` and
    ``rates[i]`` its ageing rate (:func:`ageest.plots.synthetic_faces` draws them)."""
    faces, rates = [], []
    for i in range(n_subjects):
        ident = Identity.sample(_rng(seed, 20, i))
        faces.append([render_face(ident, appearance_age(age, ident.rate), _rng(seed, 21, i, j),
                                  size) for j, age in enumerate(ages)])
        rates.append(float(ident.rate))
    return faces, rates


__all__ = ["GENERATOR_VERSION", "MARKER", "Identity", "read_marker", "appearance_age", "face_samples", "fgnet_like_table",
           "rate_apparent_age", "render_face", "write_clap_like", "write_fgnet_like"]
