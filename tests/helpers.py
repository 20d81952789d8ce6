"""Shared test helpers: small folders in the real datasets' on-disk formats, and the training
grids a notebook builds from a profile (its parameters cell, the profile's values and its
derived cell, executed without training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# FG-NET's real naming: NNNAxx.JPG, with the case quirks and a/b suffixes real copies have
FGNET_NAMES = {
    "001": ["001A02.JPG", "001A05.JPG", "001a08.jpg", "001A10.JPG"],
    "002": ["002A03.JPG", "002A10a.JPG", "002A10b.JPG", "002A16.JPG"],
    "003": ["003A20.JPG", "003A25.jpg", "003A30.JPG", "003A35.JPG"],
    "004": ["004A40.JPG", "004A45.JPG", "004A50.JPG", "004A61.JPG"],
}
#: CLAP2016 fixture: (file, apparent mean, σ); σ = 0 on some rows as in the real labels
CLAP_ROWS = {
    "train": [("000000.jpg", 24.5, 3.0), ("000001.jpg", 30.2, 4.0), ("000002.jpg", 1.4, 0.0),
              ("000003.jpg", 45.5, 5.0), ("000004.jpg", 60.0, 2.5), ("000005.jpg", 12.0, 1.5),
              ("000006.jpg", 33.3, 0.0), ("000007.jpg", 70.1, 6.0)],
    "valid": [("000008.jpg", 40.0, 5.0), ("000009.jpg", 55.6, 0.0), ("000010.jpg", 8.0, 1.0),
              ("000011.jpg", 27.5, 2.0)],
    "test": [("000012.jpg", 70.0, 8.0), ("000013.jpg", 99.7, 0.0), ("000014.jpg", 12.0, 2.0),
             ("000015.jpg", 36.0, 4.0), ("000016.jpg", 22.2, 3.0)],
}
#: the fixture's ignore list (yu4u's format: one name a line) and its tiny images
CLAP_IGNORED = ["000001.jpg", "000013.jpg"]
CLAP_TINY = {"000010.jpg": (30, 30), "000016.jpg": (16, 40)}


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 40)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, format="JPEG")


def write_fgnet_fixture(root: Path) -> Path:
    """An FG-NET-format folder (``images/`` with real names) of 4 subjects, 16 images."""
    folder = root / "images"
    for i, name in enumerate(n for names in FGNET_NAMES.values() for n in names):
        _image(folder / name, i)
    return root


def write_clap_fixture(root: Path) -> Path:
    """A CLAP2016 / APPA-REAL release folder: ``train/ valid/ test/``, ``gt_avg_*.csv`` in the
    release's columns, ``ignore_list.txt`` in the folder (where the official code reads it) and
    two images under 32 x 32 = 1,024 pixels."""
    seed = 0
    for split, rows in CLAP_ROWS.items():
        for name, _, _ in rows:
            _image(root / split / name, seed, CLAP_TINY.get(name, (40, 40)))
            seed += 1
        pd.DataFrame([{"file_name": n, "num_ratings": 30, "apparent_age_avg": m,
                       "apparent_age_std": s, "real_age": int(m)} for n, m, s in rows]).to_csv(
            root / f"gt_avg_{split}.csv", index=False)
    (root / "ignore_list.txt").write_text("".join(f"{n}\n" for n in CLAP_IGNORED))
    return root


def notebook_grids(profile: str, stem: str, tmp_path: Path, overrides: dict | None = None
                   ) -> dict:
    """Run the parameters cell, the profile's values (plus ``overrides``) and the derived cell
    of a training notebook (no training: that happens in the next cell); return its ``grids``."""
    import nbformat

    from ageest.pipeline.reproduce import list_notebooks, notebook_parameters

    nb_path = next(n for n in list_notebooks() if n.stem == stem)
    cells = [c for c in nbformat.read(str(nb_path), as_version=4).cells if c.cell_type == "code"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    if overrides is None and profile == "paper":
        real = tmp_path / "data"
        real.mkdir(exist_ok=True)
        overrides = {"fgnet_dir": str(real), "clap_dir": str(real)}
    values = notebook_parameters(profile, nb_path, out=tmp_path / "out",
                                 overrides=overrides or {})
    ns: dict = {}
    exec("import ageest.analysis.training_grids, ageest.paths", ns)  # the setup cell's imports we need
    exec(cells[i].source, ns)
    ns.update(values)
    exec(cells[i + 1].source, ns)
    return ns["grids"]


def write_utkface_fixture(root: Path, n_images: int = 60, seed: int = 0, size: int = 32) -> Path:
    """A UTKFace-format folder of synthetic faces under the release's naming,
    ``{age}_{gender}_{race}_{datetime}.jpg.chip.jpg`` (the aligned-and-cropped set), each named
    with the age its face was drawn at (the synthetic FG-NET-like faces: 0-69), with one of the
    release's three-field names (race missing). Returns ``root``."""
    from ageest.data.loaders import parse_fgnet_name
    from ageest.data.synthetic import write_fgnet_like

    faces = write_fgnet_like(root.parent / f".{root.name}-faces", seed=seed, size=size,
                             n_subjects=max(2, n_images // 6), n_images=n_images)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, path in enumerate(sorted(faces.glob("*.JPG"))):
        age = int(parse_fgnet_name(path.name)[1])
        stamp = f"2017011{i % 10}1745{i:05d}"
        name = (f"{age}_{i % 2}_{stamp}.jpg.chip.jpg" if i == 3 else
                f"{age}_{i % 2}_{int(rng.integers(0, 5))}_{stamp}.jpg.chip.jpg")
        Image.open(path).convert("RGB").save(root / name, quality=95)
    return root


def with_comment(jpeg: bytes, text: bytes = b"re-saved by another tool") -> bytes:
    """The same JPEG with a comment (COM) segment after its start marker: other bytes, the same
    decoded pixels (what a copy with added metadata looks like)."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return jpeg[:2] + segment + jpeg[2:]


def add_identical_copies(root: Path) -> dict[str, list[str]]:
    """Add to a UTKFace-format folder three groups of identical images, as the release has them:
    a byte copy under the same age (``agree``: one copy is kept), a byte copy under another age
    (``conflict``: the pair is dropped) and a pixel-identical copy with other bytes, the same
    JPEG with a comment segment, under the same age (``pixels``: one copy is kept). Returns each
    group's file names (the original first)."""
    originals = sorted(p for p in root.iterdir() if p.name.count("_") == 3)[:3]
    groups = {}
    for i, (kind, src) in enumerate(zip(("agree", "conflict", "pixels"), originals, strict=True)):
        age, gender, race, _ = src.name.split("_", 3)
        new_age = int(age) + 7 if kind == "conflict" else int(age)
        name = f"{new_age}_{gender}_{race}_2099010100000000{i}.jpg.chip.jpg"
        data = src.read_bytes()
        (root / name).write_bytes(with_comment(data) if kind == "pixels" else data)
        groups[kind] = [src.name, name]
    return groups


def tiny_config(**kw):
    """A TrainConfig for the tiny data (the ``tiny`` fixture): small CNN, 32 px, 2 epochs."""
    from ageest.engine.train import TrainConfig

    base = dict(model="small_cnn", loss="amr", epochs=2, batch_size=16, image_size=32,
                quiet=True, seed=0)
    return TrainConfig(**{**base, **kw})
