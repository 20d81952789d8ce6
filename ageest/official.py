"""The official code's settings as data, and the official protocol built from them.

``ageest/resources/official_settings.yaml`` records every training and evaluation setting of the
official scripts (jacobzhaoziyuan/AMR-Loss), each with the file and statement it comes from and
the run parameter that carries it. ``scope: all`` settings are what every run of the paper
profile uses; ``scope: official`` settings are what makes a run *official-protocol* (epoch
chosen on the test set, the official training set, data filters and readouts); the clean runs
keep their ``clean`` value, for the reason recorded beside it. :func:`official_grid` turns a
clean grid into its official-protocol twin; :func:`check_run` lists where one run's parameters
differ from the record (the paper profile's runs are checked in ``tests/test_official.py``), and
:func:`settings_markdown` renders the record for ``docs/reproduce.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

#: the record's dataset columns: FG-NET-format and CLAP2016-format runs
KINDS = ("fgnet", "clap")
#: the selection of official-protocol runs (one name, used everywhere)
OFFICIAL_SELECTION = "test_best_epoch_official"
#: how each selection reads in tables and captions: the one home of the selection protocols
SELECTION_LABELS = {"val_best": "clean (validation-selected)",
                    "last": "clean (last epoch)",
                    OFFICIAL_SELECTION: "official (test-selected epoch)"}
#: the selections a run may use (:class:`ageest.engine.train.TrainConfig`'s ``selection``)
SELECTIONS = tuple(SELECTION_LABELS)
#: the label of official-protocol rows in every table, figure and the report
OFFICIAL_LABEL = SELECTION_LABELS[OFFICIAL_SELECTION]
#: how official-protocol rows read the softmax out: MAE from the rounded expectation, CS from
#: the argmax class (``main_FGNET.py``), over θ = 0..10
OFFICIAL_READOUTS = {"mae": "rounded", "cs": "argmax"}
OFFICIAL_CS_THETAS = tuple(range(11))


def protocol_label(selection: str) -> str:
    """The protocol column of a table row: the official label, or clean with the selection.

    >>> protocol_label("test_best_epoch_official")
    'official (test-selected epoch)'
    >>> protocol_label("val_best")
    'clean (val_best)'
    """
    return OFFICIAL_LABEL if selection == OFFICIAL_SELECTION else f"clean ({selection})"


@functools.lru_cache(maxsize=1)
def record() -> dict[str, Any]:
    """The parsed ``official_settings.yaml`` (``repository``, ``commit``, ``settings``,
    ``departures``)."""
    import yaml

    text = resources.files("ageest.resources").joinpath("official_settings.yaml").read_text(
        encoding="utf-8")
    data = yaml.safe_load(text)
    for entry in data["settings"]:
        if entry["scope"] not in ("all", "official"):
            raise ValueError(f"official_settings.yaml: {entry['key']}: scope must be all or "
                             "official")
        if entry["scope"] == "official" and "reason" not in entry:
            raise ValueError(f"official_settings.yaml: {entry['key']}: an official-only "
                             "setting needs the reason the clean runs differ")
    return data


def official_values(kind: str, scope: str | None = None) -> dict[str, Any]:
    """``{key: official value}`` for ``kind`` (``fgnet`` or ``clap``), optionally of one scope.

    >>> official_values("fgnet", "official")["val_fraction"]
    0.0
    >>> official_values("clap")["seed"], official_values("fgnet")["seed"]
    (2019, 42)
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    return {e["key"]: e[kind] for e in record()["settings"]
            if kind in e and e.get("of") != "code" and (scope is None or e["scope"] == scope)}


def official_grid(grid: Mapping[str, Any], kind: str, losses: list[str]) -> dict[str, Any]:
    """The official-protocol twin of a clean runner grid: the same training settings, the
    ``scope: official`` values of the record (test-selected epoch on the official metric, no
    validation carve for FG-NET, CLAP2016's ignore list on every split and its tiny-image rule),
    and ``losses``."""
    values = official_values(kind, "official")
    out = {**grid, "losses": list(losses), "selection": [values.pop("selection")]}
    out.update(values)
    return out


def _effective(params: Mapping[str, Any], key: str) -> Any:
    """A run parameter as the trainer applies it (defaults resolved)."""
    if key == "weight_decay" and params.get("weight_decay") is None:
        return 0.01 if params.get("optimizer") == "adamw" else 1e-4
    if key == "num_classes":
        if params.get("end_age") is None or params.get("start_age") is None:
            return None
        return int(params["end_age"]) - int(params["start_age"]) + 1
    return params.get(key)


def _code_value(key: str, kind: str) -> Any:
    """What ageest's code does for a record entry that is not a run parameter (``of: code``):
    computed from the code itself, not restated."""
    import inspect

    import torch

    from ageest import losses
    from ageest.engine import models

    if key == "head":  # the layer after the backbone, built on the meta device (no weights)
        with torch.device("meta"):
            net = models.get_model("resnet50", num_classes=7)
        last = net.fc
        return "linear" if isinstance(last, torch.nn.Linear) else type(last).__name__
    if key == "residue_eps":
        return inspect.signature(losses.MeanResidueLoss).parameters["eps"].default
    if key == "residue_mask_gradient":
        logits = torch.zeros(2, 5, requires_grad=True)
        return bool(losses.topk_mask(logits, torch.tensor([1, 3])).requires_grad)
    if key == "pretrained_weights":
        return models.PRETRAINED_WEIGHTS
    if key == "cs_readout":
        return OFFICIAL_READOUTS["cs"]
    if key == "mae_readout":
        return OFFICIAL_READOUTS["mae"]
    if key == "cs_thetas":
        return list(OFFICIAL_CS_THETAS)
    raise KeyError(f"official_settings.yaml: {key}: no code value to check it against")


def check_code() -> list[str]:
    """Where ageest's code differs from the record's ``of: code`` entries (the head, the
    residue's ε and mask, the pretrained weights, the official readouts and θ range): ``"key:
    official X, ageest Y"`` lines; empty when the code matches."""
    problems = []
    for entry in record()["settings"]:
        if entry.get("of") != "code":
            continue
        for kind in KINDS:
            if kind in entry and _code_value(entry["key"], kind) != entry[kind]:
                problems.append(f"{entry['key']} ({kind}): official {entry[kind]!r}, ageest "
                                f"{_code_value(entry['key'], kind)!r}")
    return problems


def check_run(params: Mapping[str, Any], kind: str) -> list[str]:
    """Where one run's parameters (a ``params.yaml``) differ from the official record: every
    ``scope: all`` setting, and the ``scope: official`` ones for official-protocol runs (clean
    runs must keep their recorded ``clean`` value instead). Returns ``"key: official X, run
    Y"`` lines; empty when the run matches."""
    official = params.get("selection") == OFFICIAL_SELECTION
    problems = []
    for entry in record()["settings"]:
        if kind not in entry or entry.get("of") == "code":
            continue
        key = entry["key"]
        if key in ("lambda_mean", "lambda_residue") and params.get("loss") != "amr":
            continue  # the λ pair of the paper's loss; other losses have their own weights
        want = entry[kind] if (entry["scope"] == "all" or official) else entry.get("clean")
        if key == "select_metric" and not official:
            want = entry["clean"]
        got = _effective(params, key)
        if isinstance(want, list) and isinstance(got, (list, tuple)):
            same = list(got) == want
        elif isinstance(want, float) and isinstance(got, (int, float)):
            same = abs(float(got) - want) <= 1e-12 * max(1.0, abs(want))
        else:
            same = got == want
        if not same:
            problems.append(f"{key}: official {want!r}, run {got!r}")
    return problems


def settings_markdown(profiles: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The record as a Markdown table: setting, scope, the official value per dataset, where it
    comes from, and what each profile's runs use (``profiles``: profile name -> ``{"fgnet": one
    clean run's params, "fgnet_official": ..., "clap": ..., "clap_official": ...}``)."""

    def show(v: Any) -> str:
        if v is None or v == "":  # init_from "": no run to start from
            return "none"
        if isinstance(v, list):
            return ",".join(str(x) for x in v)
        return str(v).lower() if isinstance(v, bool) else str(v)

    names = list(profiles)
    head = ["setting", "runs", "official FG-NET", "official CLAP2016",
            *[f"{n} profile (FG-NET / CLAP2016)" for n in names], "official code"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in record()["settings"]:
        key, scope = entry["key"], entry["scope"]
        runs = "every run" if scope == "all" else "official-protocol runs"
        cells = [f"`{key}`", runs, show(entry.get("fgnet", "-")) if "fgnet" in entry else "-",
                 show(entry["clap"]) if "clap" in entry else "-"]
        for n in names:
            p = profiles[n]
            suffix = "_official" if scope == "official" else ""
            vals = []
            for kind in KINDS:
                run = p.get(kind + suffix)
                vals.append(show(_code_value(key, kind)) if entry.get("of") == "code"
                            and kind in entry else show(_effective(run, key))
                            if run is not None and kind in entry else "-")
            cells.append(" / ".join(vals))
        cells.append(entry["source"].replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Clean runs keep, for official-only settings: "
              + "; ".join(f"`{e['key']}` {show(e['clean'])} ({e['reason']})"
                          for e in record()["settings"] if e["scope"] == "official") + ".",
              "", "Departures kept on purpose in every run:", ""]
    lines += [f"- **{d['what']}**: official {d['official']}; ageest {d['ageest']}. {d['reason']}."
              for d in record()["departures"]]
    return "\n".join(lines)


__all__ = ["KINDS", "OFFICIAL_CS_THETAS", "OFFICIAL_LABEL", "OFFICIAL_READOUTS",
           "OFFICIAL_SELECTION", "SELECTIONS", "SELECTION_LABELS",
           "protocol_label", "check_code", "check_run", "official_grid",
           "official_values", "record", "settings_markdown"]
