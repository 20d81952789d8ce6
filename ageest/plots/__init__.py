"""Every figure ageest draws, each a function returning a matplotlib ``Figure`` for
:func:`ageest.pipeline.artefacts.save_figure` (declared in :mod:`ageest.pipeline.catalogue`):

- :mod:`ageest.plots.results`: the pipeline's results, drawn from its tables (learning curves,
  CS curves, the K ablation, the dual protocol ...);
- :mod:`ageest.plots.loss`: notebook 01's loss illustration and the explorer's picture;
- :mod:`ageest.plots.loss_explorer`: notebook 01's interactive explorer (ipywidgets; imported
  on its own, not here);
- :mod:`ageest.plots.faces`: a dataset's faces across ages, and the synthetic generator's.
"""

from ageest.plots.faces import face_grid, prediction_figure, synthetic_faces
from ageest.plots.loss import (
    distributions_figure,
    explorer_figure,
    gradients_figure,
    k_sweep_figure,
    loss_response_figure,
)
from ageest.plots.results import (
    SYNTHETIC_TAG,
    adaptive_k_distribution,
    adaptive_k_per_epoch,
    age_group_mae,
    age_histograms,
    ambiguity_calibration,
    cs_curves,
    dual_protocol,
    k_ablation,
    learning_curves,
    subject_trajectories,
)

__all__ = [
    "SYNTHETIC_TAG", "adaptive_k_distribution", "adaptive_k_per_epoch", "age_group_mae",
    "age_histograms", "ambiguity_calibration", "cs_curves", "distributions_figure",
    "dual_protocol", "explorer_figure", "face_grid", "gradients_figure", "k_ablation",
    "k_sweep_figure", "learning_curves", "loss_response_figure", "prediction_figure",
    "subject_trajectories", "synthetic_faces",
]
