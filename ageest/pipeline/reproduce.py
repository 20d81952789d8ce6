"""The papermill pipeline (``ageest reproduce``): execute every numbered notebook in order with the
parameters of one profile, render each to HTML, and leave a manifest and ``REPORT.md``.

A profile is a folder ``params/<profile>/`` holding one YAML file per notebook
(``<notebook-stem>.yaml``) whose keys must be parameters declared in that notebook's cell tagged
``parameters``. ``profile`` and ``results_dir`` are passed to every notebook by the pipeline
itself; the command-line options ``--fgnet``, ``--clap``, ``--device`` and ``--workers`` are passed
to the notebooks that declare ``fgnet_dir``, ``clap_dir``, ``device`` and ``workers``.

Outputs under ``<results>/<profile>/`` (or ``--results-dir``): ``executed/NN_name.ipynb`` and
``.html``, ``tables/``, ``figures/``, ``metrics/``, ``runs/``, ``manifest.json`` and
``REPORT.md``. Training runs are cached by the runner, so an interrupted pipeline reruns cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ageest import paths
from ageest.errors import UserError
from ageest.files import atomic_write_text, read_json, write_manifest
from ageest.parameters import (
    SHARED_FILE,
    Setting,
    annotation_alternatives,
    annotation_kind,
    annotation_setting,
    as_list,
    check_value,
    parse_text,
)

PROFILES = ("smoke", "default", "paper", "utkface", "fgnet")
KERNEL_NAME = "ageest"
NOTEBOOK_PATTERN = re.compile(r"^\d{2}_[A-Za-z0-9_]+\.ipynb$")
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Parameters every notebook declares and the pipeline fills in itself.
PIPELINE_PARAMETERS = ("profile", "results_dir")


class ReproduceError(UserError, RuntimeError):
    """A user-fixable problem with a profile, a parameter file or a notebook run."""


class NotebookFailed(ReproduceError):
    """A notebook raised while executing; carries the notebook, the cell and the error."""

    def __init__(self, notebook: Path, cell_index: int | None, ename: str, evalue: str,
                 executed: Path, source: str = ""):
        self.notebook, self.cell_index, self.ename, self.evalue = notebook, cell_index, ename, evalue
        self.executed, self.source = executed, source
        cell = "?" if cell_index is None else str(cell_index)
        first_line = next((ln for ln in source.splitlines() if ln.strip()), "")
        super().__init__(
            f"{notebook.name} failed in cell {cell} (of the executed notebook, which has the "
            f"injected parameters cell) `{first_line[:80]}`: {ename}: {evalue}\n"
            f"  the partially executed notebook is {executed}"
        )


@dataclass
class NotebookResult:
    """What one executed notebook left behind."""

    name: str
    seconds: float
    parameters: dict[str, Any]
    executed: Path
    html: Path | None = None
    tables: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    """What :func:`reproduce` produced."""

    profile: str
    out: Path
    notebooks: list[NotebookResult] = field(default_factory=list)
    manifest: Path | None = None
    report: Path | None = None
    wall_time_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# notebooks and their parameters


def list_notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The pipeline's notebooks, ``NN_name.ipynb`` in ``notebooks_dir``, in numeric order."""
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else paths.NOTEBOOKS
    if not notebooks_dir.is_dir():
        raise ReproduceError(f"notebook folder {notebooks_dir} does not exist")
    found = sorted(p for p in notebooks_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name))
    if not found:
        raise ReproduceError(f"no notebooks named NN_name.ipynb in {notebooks_dir}")
    return found


def declared_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """Parameters declared in a notebook's cell tagged ``parameters``.

    Returns papermill's description of each (``name``, ``inferred_type_name``, ``default``,
    ``help``). A notebook without a ``parameters`` cell is an error: the pipeline cannot pass it
    anything.
    """
    notebook = Path(notebook).resolve()
    return dict(_inspect(notebook, notebook.stat().st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _inspect(notebook: Path, mtime_ns: int) -> dict[str, dict[str, Any]]:
    """papermill's inspection of one notebook version (cached: it is slow and asked often)."""
    import papermill

    params = papermill.inspect_notebook(str(notebook))
    if not params:
        raise ReproduceError(
            f"{notebook} has no cell tagged 'parameters' (or it declares nothing); add one with "
            "at least `profile: str = \"smoke\"` and `results_dir: str = \"\"`"
        )
    return dict(params)


def params_file(profile: str, notebook: str | Path, params_dir: str | Path | None = None) -> Path:
    """``params/<profile>/<notebook-stem>.yaml`` (which may not exist: then no overrides)."""
    params_dir = Path(params_dir) if params_dir else paths.PARAMS
    return params_dir / profile / f"{Path(notebook).stem}.yaml"


def read_params_file(path: str | Path) -> dict[str, Any]:
    """Read one profile YAML file: a flat mapping of parameter name to literal (or empty)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ReproduceError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReproduceError(f"{path}: expected a mapping of parameter: value, got "
                             f"{type(data).__name__}")
    for key, value in data.items():
        # a literal, a flat list, or a mapping of those (a notebook's dict parameter, such as
        # train_options: {tta_flip: true}); nothing deeper
        items = list(value.values()) if isinstance(value, dict) else [value]
        if any(isinstance(v, dict) or (isinstance(v, list) and any(
                isinstance(i, (dict, list)) for i in v)) for v in items):
            raise ReproduceError(
                f"{path}: parameter {key!r} is nested ({value!r}); notebook parameters are "
                "literals, flat lists or mappings of those, e.g. losses: [amr, ce]"
            )
    return data


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def _type_ok(type_name: str | None, value: Any) -> bool:
    """Whether ``value`` fits a papermill ``inferred_type_name`` such as ``int | None``."""
    if not type_name or type_name == "None":
        return True
    for alt in annotation_alternatives(type_name):
        if alt in ("None", "NoneType") and value is None:
            return True
        base, _, item = alt.partition("[")
        check = _TYPE_CHECKS.get(base)
        if check is None:  # an annotation we do not model: do not second-guess it
            return True
        if check(value) and (base != "list" or not item or all(
                _type_ok(item.rstrip("]"), v) for v in value)):
            return True
    return False


def check_parameters(values: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], *,
                     notebook: str | Path, source: str | Path, values_checked: bool = False
                     ) -> None:
    """Raise :class:`ReproduceError` for a key the notebook does not declare, a wrong type, or
    a training setting's value outside its declaration (range, choices, registry names:
    :func:`check_declared`), where the value enters: a profile file or the command line.

    The message names the key, the file it came from (``source``) and the notebook, and lists the
    parameters the notebook does declare.
    """
    notebook = Path(notebook)
    for key, value in values.items():
        if key not in declared:
            raise ReproduceError(
                f"unknown parameter {key!r} in {source}: notebook {notebook.name} declares "
                f"{', '.join(sorted(declared))}; remove the key or add it to the notebook's "
                "parameters cell"
            )
        type_name = declared[key].get("inferred_type_name")
        if not _type_ok(type_name, value):
            raise ReproduceError(
                f"parameter {key!r} in {source} is {value!r} ({type(value).__name__}), but "
                f"notebook {notebook.name} declares it as {type_name}"
            )
        if not values_checked:  # the name and type per notebook, the value once
            check_declared(key, value, source=source, notebook=notebook.name,
                           type_name=type_name)


def check_declared(name: str, value: Any, *, source: str | Path, notebook: str,
                   type_name: str | None = None) -> None:
    """A notebook parameter that is a training setting (``epochs``, ``losses``, ``clap_epochs``
    as ``epochs`` ...; each entry of ``train_options``) checked against its declaration in
    :data:`ageest.engine.grids.SCHEMA`, so ``-p epochs -1`` or ``epochs: -1`` in a profile fails
    before the first notebook, naming where it came from; ``""``/``None`` mean "the default"
    and an empty ``*losses`` "no such runs" (the notebook decides whether that is allowed)."""
    from ageest.engine.grids import SCHEMA, check_setting

    if name == "train_options" and isinstance(value, dict):
        for option, option_value in value.items():
            if option not in SCHEMA:
                raise ReproduceError(f"parameter train_options in {source}: {option!r} is not a "
                                     "training setting; see `ageest run --help` for the names")
            try:
                check_setting(option, option_value)
            except ValueError as exc:
                raise ReproduceError(f"parameter train_options in {source}: {exc}") from None
        return
    key = _AS_GRID_KEY.get(name, name)
    if name == "losses" and value == []:  # notebook 02's comparison needs one (clap_losses
        # and official_losses may be empty: "no such runs")
        raise ReproduceError(f"parameter 'losses' in {source}: empty; name at least one loss, "
                             f"e.g. amr,mean_variance,ce (notebook {notebook})")
    if name in PIPELINE_PARAMETERS or value is None or value == "" or (
            name.endswith("losses") and value == []):
        return
    try:
        if key in SCHEMA:
            check_setting(key, value)
        else:
            check_value(notebook_setting(name, type_name), value, "notebook parameter")
    except ValueError as exc:
        raise ReproduceError(f"parameter {name!r} in {source}: {value!r}: {exc} (notebook "
                             f"{notebook})") from None


#: what the parameters cells cannot say of a notebook-only parameter (its annotation gives the
#: type, its comment the meaning): the range or choices, declared here once, so ``-p ci 1.5`` or
#: ``n_boot: -5`` in a profile fails before the first notebook instead of after the training.
#: A test holds every notebook parameter to a declaration (a grid setting, a pipeline parameter,
#: or an entry here).
NOTEBOOK_LIMITS: dict[str, dict[str, Any]] = {
    # 00 data prep
    "grid_rows": {"minimum": 1}, "grid_cols": {"minimum": 1},
    "split_fractions": {"minimum": 0.0, "maximum": 1.0},
    "pretrain_fractions": {"minimum": 0.0, "maximum": 1.0},
    # 01 loss illustration
    "true_age": {"minimum": 0}, "num_classes": {"minimum": 2}, "start_age": {"minimum": 0},
    "base_sigma": {"minimum": 0.0, "above": True}, "noise": {"minimum": 0.0},
    "fixed_k": {"minimum": 1}, "eps": {"minimum": 0.0, "above": True},
    "dldl_sigma": {"minimum": 0.0, "above": True}, "sweep_points": {"minimum": 2},
    # 03 evaluation, 04 K ablation
    "readout": {"choices": ("expectation", "rounded", "argmax", "median")},
    "reference": {"registry": "losses"},
    "age_bins": {"minimum": 0.0},
    "n_boot": {"minimum": 1}, "ci": {"minimum": 0.0, "maximum": 1.0, "above": True},
    "paired_test": {"choices": ("permutation", "wilcoxon")},
    "n_resamples": {"minimum": 1}, "paired_unit": {"choices": ("subject", "image")},
    "calibration_bins": {"minimum": 1}, "seed": {"minimum": 0}, "ks": {"minimum": 1},
    # notebook switches and folders: their type is all there is to check
    "fgnet_dir": {}, "clap_dir": {}, "utkface_dir": {}, "utkface_split": {}, "official": {},
    "pretrain_dir": {},
    "train_options": {},
}


def _limited(setting: Setting) -> Setting:
    """``setting`` with its :data:`NOTEBOOK_LIMITS` (a registry name's choices filled in)."""
    limits = dict(NOTEBOOK_LIMITS.get(setting.name, {}))
    if limits.pop("registry", None) == "losses":
        from ageest.losses import list_losses

        limits["choices"] = tuple(list_losses())
    return dataclasses.replace(setting, **limits)


def notebook_setting(name: str, type_name: str | None) -> Setting:
    """The declaration a notebook parameter's text is read by: a training setting's own (the
    grid schema's, from :class:`~ageest.engine.train.TrainConfig` and
    :data:`ageest.engine.grids.SCHEMA`; ``clap_epochs`` is ``epochs``'s, a notebook's scalar
    ``protocol`` one item of the grid axis), else the notebook's annotation ``type_name`` (its
    parameters cell is the one declaration of a parameter no grid has)."""
    from ageest.engine.grids import SCHEMA

    key = _AS_GRID_KEY.get(name, name)
    if key not in SCHEMA or name in PIPELINE_PARAMETERS:
        return _limited(annotation_setting(name, type_name))
    setting = SCHEMA[key]
    if setting.kind == "list" and annotation_kind(type_name or "str")[0] != "list":
        setting = dataclasses.replace(setting, kind=setting.item)  # one value of an axis
    optional = setting.optional or "None" in annotation_alternatives(type_name or "str")
    return dataclasses.replace(setting, name=name, optional=optional)  # None: the default


def convert_parameter(name: str, text: str, type_name: str | None, notebook: str) -> Any:
    """The command-line text of ``-p NAME VALUE`` read by the parameter's declaration
    (:func:`notebook_setting`, :func:`ageest.parameters.parse_text`): ``-p epochs 4`` is the
    integer 4 because ``epochs`` is declared an integer; a list takes comma-separated items;
    ``none`` is ``None`` where the declaration allows it.

    >>> convert_parameter("epochs", "4", "int", "02_training.ipynb")
    4
    >>> convert_parameter("pretrained", "false", "bool", "02_training.ipynb")
    False
    >>> convert_parameter("losses", "amr,ce", "list[str]", "02_training.ipynb")
    ['amr', 'ce']
    """
    try:
        return parse_text(notebook_setting(name, type_name), text, where="-p")
    except ValueError as exc:
        raise ReproduceError(f"{exc}; notebook {notebook} declares {name} as "
                             f"{type_name or 'str'}") from None


def shared_file(profile: str, params_dir: str | Path | None = None) -> Path:
    """``params/<profile>/training.yaml``: keys passed to every notebook that declares them."""
    return (Path(params_dir) if params_dir else paths.PARAMS) / profile / SHARED_FILE


def shared_parameters(profile: str, params_dir: str | Path | None = None) -> dict[str, Any]:
    """The profile's shared keys (empty when it has no ``training.yaml``)."""
    path = shared_file(profile, params_dir)
    values = read_params_file(path) if path.is_file() else {}
    for key in PIPELINE_PARAMETERS:
        if key in values:
            raise ReproduceError(f"{path}: {key!r} is set by `ageest reproduce` itself; "
                                 "remove it from the file")
    return values


def notebook_parameters(profile: str, notebook: str | Path, *, out: Path,
                        overrides: Mapping[str, Any] | None = None,
                        params_dir: str | Path | None = None,
                        text_overrides: Mapping[str, str] | None = None,
                        command_line: CommandLine | None = None) -> dict[str, Any]:
    """The parameters one notebook receives: the profile's shared keys it declares
    (``training.yaml``), then its own profile YAML, then ``overrides`` (command-line
    values, given as notebook parameter names; only those the notebook declares are passed),
    then ``text_overrides`` (``-p NAME VALUE`` texts, converted to the declared type), then
    ``profile`` and ``results_dir``. Everything is checked against the notebook.

    With ``command_line`` (:func:`read_command_line`: the ``-p`` values of every notebook,
    read and checked once) instead of ``text_overrides``, the profile's files count as
    checked too (:func:`check_profile`, which :func:`plan_notebooks` calls first): each value is
    checked once where it enters, not once per notebook."""
    if command_line is not None and text_overrides:
        raise ValueError("give text_overrides or command_line, not both")
    checked = command_line is not None
    notebook = Path(notebook)
    declared = declared_parameters(notebook)
    missing = [p for p in PIPELINE_PARAMETERS if p not in declared]
    if missing:
        raise ReproduceError(
            f"notebook {notebook.name} does not declare {', '.join(missing)} in its parameters "
            "cell; every pipeline notebook must (they name its output folder)"
        )
    source = params_file(profile, notebook, params_dir)
    shared = shared_parameters(profile, params_dir)
    values: dict[str, Any] = {k: v for k, v in shared.items() if k in declared}
    # a training setting the notebook has no parameter for travels in its train_options
    routed = {k: v for k, v in shared.items() if k not in declared and routes(k, declared)}
    own = read_params_file(source) if source.is_file() else {}
    for key in PIPELINE_PARAMETERS:
        if key in own:
            raise ReproduceError(f"{source}: {key!r} is set by `ageest reproduce` itself; "
                                 "remove it from the file")
    if not checked:
        check_parameters(values, declared, notebook=notebook,
                         source=shared_file(profile, params_dir))
        check_parameters(own, declared, notebook=notebook, source=source)
    values.update(own)
    _route(values, routed, notebook=notebook, source=shared_file(profile, params_dir),
           checked=checked)
    # reproduce's own flags (--fgnet, --device ...), then the -p values
    given = {key: value for key, value in (overrides or {}).items()
             if value is not None and key in declared}
    check_parameters(given, declared, notebook=notebook, source="the command line")
    values.update(given)
    if command_line is None:
        command_line = read_command_line(text_overrides or {}, [notebook])
    given = {k: v for k, v in command_line.values.items() if k in declared}
    # the command line's train_options add to the profile's (a name in both: the command line's)
    cli_options = given.pop("train_options", None) or {}
    values.update(given)
    if cli_options:
        values["train_options"] = {**(values.get("train_options") or {}), **cli_options}
    routed_cli = {k: v for k, v in command_line.routed.items() if _takes(k, declared)}
    twice = sorted(set(routed_cli) & set(cli_options))
    if twice:
        raise ReproduceError(f"-p {twice[0]} is also in -p train_options; give it once")
    if routed_cli:  # over what the profile put there: the command line has the last word
        values["train_options"] = {**(values.get("train_options") or {}), **routed_cli}
    values["profile"] = profile
    values["results_dir"] = str(out)
    return values


def routes(name: str, declared: Mapping[str, Any]) -> bool:
    """Whether ``name``, which the notebook does not declare, reaches its runs anyway: a
    training setting (:func:`ageest.analysis.training_grids.training_keys`, derived from the
    grid schema) given to a notebook that declares ``train_options`` (notebooks 02 and 04)."""
    from ageest.analysis.training_grids import training_keys

    return "train_options" in declared and name in training_keys()


def _takes(name: str, declared: Mapping[str, Any]) -> bool:
    """Whether a notebook takes ``name`` in its ``train_options`` (it routes there and the
    notebook has no parameter of that name)."""
    return name not in declared and routes(name, declared)


def _route(values: dict[str, Any], routed: Mapping[str, Any], *, notebook: Path,
           source: str | Path, checked: bool = False) -> None:
    """Put the undeclared training settings of the profile's ``source`` into
    ``values["train_options"]``, each checked by its declaration; one also in the profile's
    ``train_options`` is an error (one value per setting)."""
    if not routed:
        return
    options = dict(values.get("train_options") or {})
    twice = sorted(set(options) & set(routed))
    if twice:
        raise ReproduceError(f"{twice[0]} in {source} is also in train_options; give it once")
    if not checked:
        check_declared("train_options", dict(routed), source=source, notebook=notebook.name)
    values["train_options"] = {**options, **routed}


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """The ``-p NAME VALUE`` texts read once: ``values`` by notebook parameter (each converted
    by its declaration and checked), ``routed`` the training settings no notebook declares
    (for the ``train_options`` of notebooks 02 and 04)."""

    values: dict[str, Any]
    routed: dict[str, Any]


def read_command_line(texts: Mapping[str, str], notebooks: list[Path]) -> CommandLine:
    """Each ``-p`` text converted and checked once, by the first notebook that declares it
    (notebooks declare a shared name alike: a test holds them to it) or, for a training
    setting no notebook declares, by the grid schema; a name neither is an error."""
    from ageest.engine.grids import SCHEMA

    values: dict[str, Any] = {}
    routed: dict[str, Any] = {}
    for key, text in texts.items():
        if key in PIPELINE_PARAMETERS:
            raise ReproduceError(f"-p {key}: set by `ageest reproduce` itself "
                                 f"(use --{key.replace('_', '-')})")
        owner = next((nb for nb in notebooks if key in declared_parameters(nb)), None)
        if owner is not None:
            declared = declared_parameters(owner)
            values[key] = convert_parameter(key, text, declared[key].get("inferred_type_name"),
                                            owner.name)
            check_parameters({key: values[key]}, declared, notebook=owner,
                             source="the command line")
        taker = next((nb for nb in notebooks if _takes(key, declared_parameters(nb))), None)
        if taker is None:
            continue  # reproduce refused it already when no notebook of the run takes it
        try:
            routed[key] = parse_text(SCHEMA[key], text, where="-p")
        except ValueError as exc:
            raise ReproduceError(f"{exc} (a training setting, passed to notebook "
                                 f"{taker.name} in train_options)") from None
        check_declared("train_options", {key: routed[key]}, source="the command line",
                       notebook=taker.name)
    return CommandLine(values, routed)


def check_profile(profile: str, notebooks: list[Path] | None = None,
                  params_dir: str | Path | None = None) -> list[Path]:
    """Check every YAML file of ``profile`` against the notebooks: each file must name an
    existing notebook and hold only parameters it declares. Returns the files checked."""
    params_dir = Path(params_dir) if params_dir else paths.PARAMS
    folder = params_dir / profile
    if not folder.is_dir():
        known = sorted(p.name for p in params_dir.iterdir() if p.is_dir()) if params_dir.is_dir() \
            else []
        raise ReproduceError(f"unknown profile {profile!r}: no folder {folder} "
                             f"(profiles: {', '.join(known) or 'none'})")
    notebooks = notebooks if notebooks is not None else list_notebooks()
    by_stem = {nb.stem: nb for nb in notebooks}
    checked = []
    shared = shared_parameters(profile, params_dir)
    if shared:
        checked.append(_check_shared(shared, shared_file(profile, params_dir), notebooks))
    for path in sorted(folder.glob("*.y*ml")):
        if path.name == SHARED_FILE:
            continue
        if path.stem not in by_stem:
            raise ReproduceError(f"{path} names no notebook: expected one of "
                                 f"{', '.join(sorted(by_stem))}.yaml or {SHARED_FILE}")
        values = read_params_file(path)
        repeated = sorted(set(values) & set(shared))
        if repeated:
            raise ReproduceError(f"{path}: {', '.join(repeated)} already set in {SHARED_FILE} "
                                 "(one value per profile); remove them here")
        check_parameters(values, declared_parameters(by_stem[path.stem]),
                         notebook=by_stem[path.stem], source=path)
        checked.append(path)
    return checked


def _check_shared(shared: Mapping[str, Any], path: Path, notebooks: list[Path]) -> Path:
    """Every shared key is declared by some notebook, with a type each declaring one accepts."""
    for key, value in shared.items():
        owners = [nb for nb in notebooks if key in declared_parameters(nb)]
        takers = [nb for nb in notebooks if routes(key, declared_parameters(nb))]
        if not owners and takers:  # a training setting without a parameter: train_options
            check_declared("train_options", {key: value}, source=path, notebook=takers[0].name)
            continue
        if not owners:
            raise ReproduceError(f"unknown parameter {key!r} in {path}: no notebook declares it; "
                                 "remove the key or add it to a notebook's parameters cell")
        for i, nb in enumerate(owners):  # each owner takes the type; the value checked once
            check_parameters({key: value}, declared_parameters(nb), notebook=nb, source=path,
                             values_checked=i > 0)
    return path


# ---------------------------------------------------------------------------------------------
# executing


#: notebook parameters checked as the grid key of another name (the CLAP2016-format runs' own
#: settings, the official runs' and the K ablation's losses)
_AS_GRID_KEY = {"clap_losses": "losses", "official_losses": "losses", "clap_optimizer": "optimizer",
                "clap_epochs": "epochs", "clap_grad_clip": "grad_clip",
                "clap_transforms": "transforms", "clap_normalize": "normalize",
                "clap_seeds": "seeds", "clap_label_rounding": "label_rounding",
                "pretrain_loss": "losses", "pretrain_epochs": "epochs"}


def check_devices(plan: list[tuple[Path, dict[str, Any]]]) -> None:
    """Each notebook's ``device`` exists on this machine (for the local executor), before the
    first notebook starts; the other values were checked where they entered
    (:func:`check_parameters`)."""
    from ageest.engine.grids import check_device

    for nb, params in plan:
        device = params.get("device")
        if device and params.get("executor", "local") == "local":
            try:
                check_device(str(device))
            except ValueError as exc:
                raise ReproduceError(f"parameter device of {nb.name}: {device!r}: {exc}") \
                    from None


def execute_notebook(notebook: Path, executed: Path, parameters: Mapping[str, Any], *,
                     kernel_name: str = KERNEL_NAME, html: bool = True,
                     timeout_s: int | None = None) -> NotebookResult:
    """Execute one notebook with papermill into ``executed`` (and ``.html`` next to it).

    The kernel's working directory is the notebooks folder, as in JupyterLab. Raises
    :class:`NotebookFailed` naming the failing cell and the error.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=dict(parameters), kernel_name=kernel_name,
            cwd=str(notebook.parent), progress_bar=False, log_output=False,
            execution_timeout=timeout_s,
            # the kernel process's own log (ipykernel warns that its localhost TCP channel is
            # unencrypted, and logs the interrupt papermill sends at shutdown) would interleave
            # with the progress lines; errors in cells still surface as NotebookFailed
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except PapermillExecutionError as exc:
        raise NotebookFailed(notebook, exc.cell_index, exc.ename, exc.evalue, executed,
                             exc.source or "") from exc
    except Exception as exc:
        if type(exc).__name__ == "NoSuchKernel":
            raise ReproduceError(
                f"no Jupyter kernel named {kernel_name!r}; register it with "
                f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name} "
                "--display-name 'Python (ageest)'` (the Makefile does this)"
            ) from exc
        raise
    seconds = time.perf_counter() - start
    result = NotebookResult(notebook.name, seconds, dict(parameters), executed)
    if html:
        result.html = render_html(executed)
    return result


def render_html(executed: Path) -> Path:
    """Render an executed notebook to self-contained HTML (figures embedded) next to it."""
    import nbconvert
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    return atomic_write_text(executed.with_suffix(".html"), body)


def _select(notebooks: list[Path], only: str | None) -> list[Path]:
    """Keep the notebooks whose two-digit number or stem is in the comma list ``only``."""
    if not only:
        return notebooks
    wanted = [str(w) for w in as_list(only)]
    chosen = [nb for nb in notebooks if nb.name[:2] in wanted or nb.stem in wanted]
    unknown = [w for w in wanted if not any(nb.name[:2] == w or nb.stem == w for nb in notebooks)]
    if unknown:
        raise ReproduceError(f"--only names unknown notebooks {unknown}; have "
                             f"{', '.join(nb.stem for nb in notebooks)}")
    return chosen


def _check_data_dirs(profile: str, fgnet: str | None, clap: str | None,
                     utkface: str | None = None, pretrain: str | None = None) -> None:
    for flag, value in (("--fgnet", fgnet), ("--clap", clap), ("--utkface", utkface),
                        ("--pretrain", pretrain)):
        if value and not Path(value).expanduser().is_dir():
            raise ReproduceError(f"{flag} {value}: no such folder")
    if pretrain and (utkface or profile == "utkface"):
        raise ReproduceError("--pretrain pretrains the FG-NET-format runs on UTKFace faces; the "
                             "UTKFace runs need no such stage: leave --pretrain out")
    if utkface and (fgnet or clap):
        raise ReproduceError("--utkface runs the pipeline on UTKFace alone; give it without "
                             "--fgnet and --clap (use another --results-dir for those)")
    if profile == "utkface" and not utkface:
        raise ReproduceError(
            "profile 'utkface' trains on real UTKFace faces; pass --utkface DIR (the folder of "
            "{age}_{gender}_{race}_{datetime}.jpg crops, e.g. UTKFace's 'Aligned&Cropped "
            "Faces'). Use --profile default for the synthetic stand-ins.")
    if profile == "fgnet" and not fgnet:
        raise ReproduceError(
            "profile 'fgnet' trains on the real FG-NET release; pass --fgnet DIR (the folder of "
            "1,002 NNNAxx.JPG photos with points/ beside it: `ageest fetch fgnet` writes one). "
            "Use --profile default for the synthetic stand-ins.")
    if profile == "fgnet" and clap:
        raise ReproduceError("profile 'fgnet' runs FG-NET alone; give --clap DIR to the paper "
                             "profile (or another --results-dir)")
    if profile == "paper" and not (fgnet and clap):
        missing = [f for f, v in (("--fgnet DIR", fgnet), ("--clap DIR", clap)) if not v]
        raise ReproduceError(
            "profile 'paper' trains on the real datasets; pass " + " and ".join(missing) +
            " (FG-NET: the folder of 1,002 NNNAxx.JPG images; CLAP2016: the APPA-REAL release "
            "folder with train/ valid/ test/ and gt_avg_*.csv). Use --profile default for the "
            "synthetic stand-ins."
        )


def reproduce(profile: str, *, fgnet: str | None = None, clap: str | None = None,
              utkface: str | None = None, pretrain: str | None = None,
              device: str | None = None, workers: int | None = None,
              results_dir: str | Path | None = None, only: str | None = None,
              notebooks_dir: str | Path | None = None, params_dir: str | Path | None = None,
              kernel_name: str = KERNEL_NAME, html: bool = True, report: bool = True,
              log: Callable[[str], None] | None = None,
              parameters: Mapping[str, str] | None = None) -> PipelineResult:
    """Execute the pipeline's notebooks for ``profile`` (see the module docstring).

    Every notebook's parameters are checked before the first one runs, so a typo in a YAML file
    fails in seconds, not after an hour of training. One progress line is logged per notebook
    (``log``; default: printed and flushed at once, so redirected output shows progress live).
    """
    log = log or functools.partial(print, flush=True)
    if not PROFILE_NAME.fullmatch(profile):
        raise ReproduceError(f"--profile {profile!r}: a profile is a name (letters, digits, _ "
                             "and -), not a path; put your own profile folders in a directory "
                             "and pass --params-dir DIR")
    if profile not in PROFILES and not (Path(params_dir or paths.PARAMS) / profile).is_dir():
        raise ReproduceError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}"
                             + (f" or a folder of {params_dir}" if params_dir else ""))
    _check_data_dirs(profile, fgnet, clap, utkface, pretrain)
    out = paths.output_root(profile, results_dir)
    notebooks = list_notebooks(notebooks_dir)
    overrides = {
        "fgnet_dir": str(Path(fgnet).expanduser().resolve()) if fgnet else None,
        "clap_dir": str(Path(clap).expanduser().resolve()) if clap else None,
        "utkface_dir": str(Path(utkface).expanduser().resolve()) if utkface else None,
        "pretrain_dir": str(Path(pretrain).expanduser().resolve()) if pretrain else None,
        "device": device, "workers": workers,
    }
    plan = plan_notebooks(profile, notebooks, only=only, out=out, overrides=overrides,
                          params_dir=params_dir, parameters=parameters)

    result = PipelineResult(profile, out)
    start = time.perf_counter()
    log(f"ageest reproduce: profile {profile}, {len(plan)} notebooks -> {out}")
    for i, (nb, params) in enumerate(plan, 1):
        executed = out / "executed" / nb.name
        cleared = clear_artefacts(nb, out)
        if cleared:
            log(f"{nb.name}: {cleared} table/figure file(s) of an earlier run removed (it "
                "writes again those it produces)")
        t0 = time.perf_counter()
        try:
            nb_result = execute_notebook(nb, executed, params, kernel_name=kernel_name, html=html)
        except NotebookFailed:
            log(f"[{i}/{len(plan)}] {nb.name:<28} FAILED after {time.perf_counter() - t0:7.1f} s")
            result.wall_time_s = time.perf_counter() - start
            result.manifest = _write_pipeline_manifest(result, plan, failed=nb.name)
            raise
        nb_result.tables, nb_result.figures = _artefacts_of(nb, out)
        result.notebooks.append(nb_result)
        log(f"[{i}/{len(plan)}] {nb.name:<28} {nb_result.seconds:7.1f} s")
    result.wall_time_s = time.perf_counter() - start
    result.manifest = _write_pipeline_manifest(result, plan)
    if report:
        from ageest.pipeline.report import summary_lines, write_report

        result.report = write_report(out, profile=profile)
        for line in summary_lines(out):  # the report's answer, also on the terminal
            log(line)
        log(f"report: {result.report}")
    log(f"done in {result.wall_time_s:.1f} s")
    return result


def plan_notebooks(profile: str, notebooks: list[Path], *, only: str | None, out: Path,
                   overrides: Mapping[str, Any], params_dir: str | Path | None = None,
                   parameters: Mapping[str, str] | None = None
                   ) -> list[tuple[Path, dict[str, Any]]]:
    """Each notebook to run (``only``) with its parameters, every value read and checked once
    where it enters: the profile's files (:func:`check_profile`), the ``-p`` texts
    (:func:`read_command_line`); then each notebook's devices. Nothing runs yet."""
    check_profile(profile, notebooks, params_dir)
    notebooks = _select(notebooks, only)
    parameters = dict(parameters or {})
    undeclared = [name for name in parameters
                  if not any(name in declared_parameters(nb)
                             or routes(name, declared_parameters(nb)) for nb in notebooks)]
    if undeclared:
        raise ReproduceError(
            f"-p {undeclared[0]}: no notebook of profile {profile!r} declares a parameter "
            f"named {undeclared[0]!r} (see `papermill --help-notebook notebooks/NN_name.ipynb`)")
    command_line = read_command_line(parameters, notebooks)
    plan = [(nb, notebook_parameters(profile, nb, out=out, overrides=overrides,
                                     params_dir=params_dir, command_line=command_line))
            for nb in notebooks]
    check_devices(plan)
    return plan


def _artefact_files(notebook: Path, out: Path):
    """``(artefact, file type, path)`` of every file :func:`~ageest.pipeline.artefacts.save_table`
    and :func:`~ageest.pipeline.artefacts.save_figure` write for the tables and figures
    ``notebook`` declares in :mod:`ageest.pipeline.catalogue`, the main file type first."""
    from ageest.pipeline.artefacts import FILE_TYPES
    from ageest.pipeline.catalogue import of_notebook

    for art in of_notebook(notebook.stem):
        for ext in FILE_TYPES[art.kind]:
            yield art, ext, out / f"{art.kind}s" / f"{art.name}.{ext}"


def _artefacts_of(notebook: Path, out: Path) -> tuple[list[str], list[str]]:
    """The tables and figures ``notebook`` declares that exist under ``out`` (their main file:
    a notebook may skip some, e.g. the CLAP2016 tables without CLAP2016 runs)."""
    from ageest.pipeline.artefacts import FILE_TYPES

    found: dict[str, list[str]] = {"table": [], "figure": []}
    for art, ext, path in _artefact_files(notebook, out):
        if ext == FILE_TYPES[art.kind][0] and path.is_file() and art.name not in found[art.kind]:
            found[art.kind].append(art.name)
    return found["table"], found["figure"]


def clear_artefacts(notebook: Path, out: Path) -> int:
    """Remove the tables and figures ``notebook`` declares from an earlier run under ``out``
    before it runs again, so a table it no longer produces (the dual-protocol table of a rerun
    without the reference loss, say) is never left to look like this run's; returns how many
    files went."""
    removed = 0
    for _, _, path in _artefact_files(notebook, out):
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


def _seeds(plan: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Every parameter whose name mentions a seed, per notebook."""
    return {nb.stem: {k: v for k, v in params.items() if "seed" in k}
            for nb, params in plan if any("seed" in k for k in params)}


def _write_pipeline_manifest(result: PipelineResult, plan: list[tuple[Path, dict[str, Any]]],
                             failed: str | None = None) -> Path:
    done = {r.name: r for r in result.notebooks}
    notebooks = []
    for nb, _ in plan:
        r = done.get(nb.name)
        status = "done" if r else ("failed" if nb.name == failed else "not run")
        notebooks.append({"notebook": nb.name, "status": status,
                          "wall_time_s": round(r.seconds, 2) if r else None,
                          "tables": r.tables if r else [], "figures": r.figures if r else []})
    # notebooks not run this time (--only) keep their entries from the previous manifest
    previous = result.out / "manifest.json"
    if previous.is_file():
        ran = {nb.name for nb, _ in plan}
        try:
            kept = [e for e in read_json(previous).get("notebooks", [])
                    if e.get("notebook") not in ran]
        except ValueError:
            kept = []
        notebooks = sorted(kept + notebooks, key=lambda e: e.get("notebook", ""))
    devices = sorted({str(p["device"]) for _, p in plan if "device" in p})
    return write_manifest(
        result.out,
        parameters={nb.stem: params for nb, params in plan},
        seeds=_seeds(plan),
        wall_time_s=round(result.wall_time_s, 2),
        extra={"profile": result.profile, "kind": "ageest reproduce",
               "requested_devices": devices, "notebooks": notebooks, "failed": failed},
    )
