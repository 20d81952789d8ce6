"""Figures of faces: a dataset's own images across ages, and the synthetic generator's faces.
The choice of images is :func:`ageest.analysis.data_summary.face_grid_picks`; the faces themselves come from
:mod:`ageest.data.synthetic`; only the drawing is here."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def face_grid(df: pd.DataFrame, *, n_rows: int = 4, n_cols: int = 8, seed: int = 0,
              title: str = "Faces across ages"):
    """A grid of the dataset's own images: with subjects, each row is one subject (those with the
    widest age span) at increasing ages; without, each row samples images at evenly spaced ages.

    Returns a matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    from ageest.analysis.data_summary import face_grid_picks

    rows = face_grid_picks(df, n_rows=n_rows, n_cols=n_cols, seed=seed)
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.15 * ncols, 1.25 * len(rows)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, row in enumerate(rows):
        for j, (path, age) in enumerate(row):
            with Image.open(path) as img:
                axes[i, j].imshow(img.convert("RGB"))
            axes[i, j].set_title(f"{age} y", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def synthetic_faces(ages: Sequence[int] = (1, 5, 10, 15, 20, 30, 40, 50, 60, 69),
                    n_subjects: int = 4, seed: int = 0, size: int = 96):
    """A grid of synthetic faces: rows are subjects (titled with their ageing rate), columns are
    calendar ages (:func:`ageest.data.synthetic.face_samples`).

    Returns a matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from ageest.data.synthetic import face_samples

    ages = list(ages)
    faces, rates = face_samples(ages, n_subjects=n_subjects, seed=seed, size=size)
    fig, axes = plt.subplots(n_subjects, len(ages), squeeze=False,
                             figsize=(1.1 * len(ages), 1.2 * n_subjects))
    for i in range(n_subjects):
        for j, age in enumerate(ages):
            ax = axes[i, j]
            ax.imshow(faces[i][j])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{age} y", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"rate {rates[i]:.2f}", fontsize=7)
    fig.suptitle("Synthetic faces across ages (rows: subjects)", fontsize=9)
    fig.tight_layout()
    return fig


def prediction_figure(image, probs, ages, *, title: str = ""):
    """An image beside its predicted age distribution, the expected age marked
    (``ageest predict --plot``)."""
    import matplotlib.pyplot as plt
    import numpy as np

    probs, ages = np.asarray(probs, dtype=np.float64), np.asarray(ages)
    expected = float(probs @ ages)
    fig, (ax_img, ax_p) = plt.subplots(1, 2, figsize=(7.5, 3.0), width_ratios=[1, 1.6])
    ax_img.imshow(image)
    ax_img.axis("off")
    ax_p.bar(ages, probs, width=0.9, color="tab:blue")
    ax_p.axvline(expected, color="tab:red", ls="--", lw=1.5,
                 label=f"expected age {expected:.1f}")
    ax_p.set_xlabel("age (years)")
    ax_p.set_ylabel("p(age)")
    ax_p.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
