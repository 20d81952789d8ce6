"""Every table and figure ageest writes, declared once.

Each :class:`Artefact` names its kind and file stem, the notebook that writes it (``None``: a
command), its title, what the paper has in its place, and the columns that must be finite in every
row. :data:`SECTIONS` orders them as ``REPORT.md`` shows them. The notebooks save through
:func:`ageest.pipeline.artefacts.save_table` / :func:`~ageest.pipeline.artefacts.save_figure`, which refuse a name
not declared here; ``reproduce`` records per notebook the artefacts it declares and wrote;
``report`` places them; the notebook tests check them. A new table is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

SYNTHETIC_NOTE = "Synthetic data (ageest's generated stand-in, not the paper's dataset)"
BEYOND = "none (beyond the paper)"
ADDITION = "none (ageest addition)"
TABLE, FIGURE = "table", "figure"


@dataclass(frozen=True)
class Artefact:
    """One table or figure."""

    kind: str  # "table" or "figure"
    name: str  # file stem under tables/ or figures/
    title: str
    paper: str  # what the paper has here, or BEYOND / ADDITION
    finite: tuple[str, ...] = ()  # table columns that must be finite in every row


@dataclass(frozen=True)
class Section:
    """A part of the report: the notebook that writes its artefacts, a paragraph, the artefacts."""

    title: str
    notebook: str | None  # notebook stem; None: written by a command
    text: str
    artefacts: tuple[Artefact, ...]
    data: bool = True  # its numbers depend on the data (synthetic data are marked)


T, F = TABLE, FIGURE
SECTIONS: tuple[Section, ...] = (
    Section("Data", "00_data_prep",
            "The datasets as loaded: counts, age distributions, example faces, and the folds with "
            "their subject-disjointness checks.", (
                Artefact(T, "data_summary", "Datasets",
                         "the datasets the paper uses (FG-NET, CLAP2016)"),
                Artefact(T, "clap_filters", "CLAP2016 loader rules, clean and official", ADDITION),
                Artefact(T, "split_summary", "Folds and disjointness checks",
                         "the paper's protocols (LOPO; CLAP2016 official split)"),
                Artefact(F, "age_histograms", "Age distributions", ADDITION),
                Artefact(F, "face_grid", "Faces across ages", ADDITION),
            )),
    Section("The loss", "01_loss_illustration",
            "The adaptive mean-residue loss explained on example distributions (notebook 01).", (
                Artefact(F, "loss_illustration_distributions", "Example distributions and top-K",
                         "the paper's illustration of the adaptive top-K"),
                Artefact(T, "loss_illustration_terms", "Loss terms on the examples", ADDITION),
                Artefact(T, "loss_illustration_response", "Each loss on the same examples",
                         ADDITION),
                Artefact(F, "loss_illustration_response", "Each loss on the same examples",
                         ADDITION),
                Artefact(F, "loss_illustration_gradients", "Gradients of each term", ADDITION),
                Artefact(T, "loss_illustration_gradients", "Gradient size and location",
                         ADDITION),
                Artefact(T, "loss_illustration_k_sweep", "Adaptive K as a prediction sharpens",
                         ADDITION, finite=("k", "residue")),
                Artefact(F, "loss_illustration_k_sweep", "Adaptive K as a prediction sharpens",
                         ADDITION),
            ), data=False),
    Section("Training", "02_training",
            "The grid of runs and the learning curves of every loss component, with the mean "
            "adaptive K per epoch.", (
                Artefact(T, "training_runs", "Runs", "the official scripts' training settings",
                         finite=("test_mae",)),
                Artefact(F, "learning_curves", "Learning curves", ADDITION),
                Artefact(F, "adaptive_k_per_epoch", "Mean adaptive K per epoch", ADDITION),
            )),
    Section("MAE comparison (FG-NET format, or UTKFace)", "03_evaluation",
            "Mean absolute error on the profile's MAE dataset (FG-NET-format data, or UTKFace), "
            "pooled over images and, where subjects are known, averaged over subjects, with "
            "subject-level (else image-level) bootstrap confidence intervals. A published number "
            "is shown beside rows on real FG-NET, with what each row did otherwise than the "
            "published setting (`published_differs`).", (
                Artefact(T, "mae_comparison", "MAE comparison",
                         "the paper reports FG-NET MAE; this is the corresponding comparison",
                         finite=("mae_pooled", "mae_pooled_low", "mae_pooled_high", "cs5")),
            )),
    Section("CLAP2016: ε-error comparison", "03_evaluation",
            "ε-error on CLAP2016-format data (apparent age with the annotators' σ).", (
                Artefact(T, "clap_epsilon_comparison", "ε-error comparison",
                         "the paper reports CLAP2016 ε-error; this is the corresponding "
                         "comparison",
                         finite=("epsilon", "epsilon_low", "epsilon_high", "epsilon_official",
                                 "mae")),
            )),
    Section("Cumulative score", "03_evaluation",
            "CS(θ), the share of images with absolute error at most θ, for θ = 0…10.", (
                Artefact(F, "cs_curves", "CS(θ) curves", "the paper reports FG-NET CS(θ)"),
                Artefact(T, "cs_curves", "CS(θ) values", "the paper reports FG-NET CS(θ)",
                         finite=("cs0", "cs5", "cs10")),
            )),
    Section("Ablation: fixed K against adaptive K", "04_ablation_k",
            "Mean-residue loss with a fixed top-K against the adaptive K, on the same folds and "
            "seeds.", (
                Artefact(T, "k_ablation", "MAE by K", "the paper's discussion of K",
                         finite=("mae_pooled", "mae_subject_mean")),
                Artefact(F, "k_ablation_mae", "MAE versus K", "the paper's discussion of K"),
                Artefact(F, "adaptive_k_distribution", "Adaptive K over training", ADDITION),
                Artefact(T, "adaptive_k_history", "Adaptive K per epoch", ADDITION,
                         finite=("k_mean",)),
            )),
    Section("Error by age group and paired tests", "03_evaluation",
            "Where the errors are, and whether AMR's difference from each baseline is larger than "
            "chance on the same images.", (
                Artefact(T, "age_group_mae", "MAE by age group", BEYOND),
                Artefact(F, "age_group_mae", "MAE by age group", BEYOND),
                Artefact(T, "paired_tests", "Paired tests, AMR against each baseline", BEYOND,
                         finite=("mean_diff", "p_value")),
            )),
    Section("Single subjects", "03_evaluation",
            "FG-NET-format data hold several photos of each person across their life: the MAE "
            "of every subject (each tested once, in its fold) and, for the subjects with the "
            "widest age span, each loss's predictions along their ageing trajectory.", (
                Artefact(T, "subject_mae", "MAE per subject", BEYOND,
                         finite=("n_images", "age_min", "age_max")),
                Artefact(F, "subject_trajectories", "Ageing trajectories of single subjects",
                         BEYOND),
            )),
    Section("Dual protocol: official against clean", "03_evaluation",
            "The same AMR configuration under the official code's protocol (epoch selected on the "
            "test set, MAE from the rounded expectation, CS from the argmax) and under the clean "
            "protocol (epoch selected on validation subjects, one readout for MAE and CS). The gap "
            "is the optimism of test-set selection when the two share their inputs; where the "
            "clean runs use clean-protocol options the official code lacks (landmark crops, age "
            "pretraining, flip averaging), the `setup` column names them and the last row is "
            "the difference of protocol and setup together. Official numbers are labelled as "
            "such.", (
                Artefact(T, "dual_protocol", "Official against clean protocol", BEYOND,
                         finite=("mae_pooled", "mae_subject_mean")),
                Artefact(F, "dual_protocol", "Official against clean protocol", BEYOND),
            )),
    Section("Protocol sensitivity", "03_evaluation",
            "How the numbers move with the readout (expectation, rounded, argmax, median), the "
            "LOPO aggregation (pooled over images or mean over subjects) and the ε-error variant.", (
                Artefact(T, "protocol_sensitivity", "MAE and CS by readout and aggregation",
                         BEYOND, finite=("mae_pooled", "mae_subject_mean", "cs5")),
                Artefact(T, "epsilon_variants", "ε-error variants", BEYOND,
                         finite=("epsilon_official", "mae_vs_mean")),
            )),
    Section("Ambiguity calibration", "03_evaluation",
            "On CLAP2016-format data: does the spread of the predicted distribution follow the "
            "annotators' disagreement σ?", (
                Artefact(T, "ambiguity_calibration", "Predicted std against annotators' σ", BEYOND,
                         finite=("sigma_mean", "pred_std_mean", "abs_error_mean")),
                Artefact(F, "ambiguity_calibration", "Reliability-style diagram", BEYOND),
            )),
    Section("Runs of `ageest run`", None,
            "Test metrics aggregated over folds by `ageest run` (also written when a grid is run "
            "from Python).", (
                Artefact(T, "aggregate", "Aggregated test metrics", BEYOND),
                Artefact(F, "synthetic_faces", "Synthetic faces (ageest data --figure)", ADDITION),
                Artefact(F, "prediction", "An image beside its predicted age distribution "
                         "(ageest predict --plot, one per image)", ADDITION),
            )),
)

#: (kind, name) -> (section, artefact)
_INDEX = {(a.kind, a.name): (s, a) for s in SECTIONS for a in s.artefacts}


def artefact(kind: str, name: str) -> Artefact:
    """The declaration of a table or figure; an undeclared one is an error naming the fix.

    >>> artefact("table", "k_ablation").finite
    ('mae_pooled', 'mae_subject_mean')
    """
    if (kind, name) not in _INDEX:
        known = sorted(n for k, n in _INDEX if k == kind)
        raise ValueError(f"{kind} {name!r} is not declared in ageest.pipeline.catalogue.SECTIONS "
                         f"(declared {kind}s: {', '.join(known)}); add it there")
    return _INDEX[(kind, name)][1]


def of_notebook(notebook: str) -> list[Artefact]:
    """The artefacts a notebook (stem) declares, in report order.

    >>> [a.name for a in of_notebook("02_training")]
    ['training_runs', 'learning_curves', 'adaptive_k_per_epoch']
    """
    return [a for s in SECTIONS if s.notebook == notebook for a in s.artefacts]


def caption(text: str, synthetic: bool) -> str:
    """A table caption, prefixed with the synthetic-data note when ``synthetic``.

    >>> caption("MAE on FG-NET.", synthetic=True).startswith("Synthetic data")
    True
    """
    return f"{SYNTHETIC_NOTE}. {text}" if synthetic else text
