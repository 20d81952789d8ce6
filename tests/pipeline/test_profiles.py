"""Profile YAML files against the notebooks' parameters cells, and the notebooks' conventions
(committed without outputs, one tagged parameters cell of typed and commented literals, kernel
``ageest``, no classes, metrics written last). Fast: nothing is executed here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from ageest import paths
from ageest.parameters import SHARED_FILE
from ageest.pipeline.reproduce import (
    PROFILES,
    ReproduceError,
    check_profile,
    declared_parameters,
    list_notebooks,
    notebook_parameters,
    read_params_file,
    reproduce,
)

NOTEBOOKS = list_notebooks()
IDS = [nb.stem for nb in NOTEBOOKS]


def _read(nb_path: Path):
    return nbformat.read(str(nb_path), as_version=4)


def _parameters_cells(nb):
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_pipeline_notebooks_present():
    stems = {nb.stem for nb in NOTEBOOKS}
    for expected in ("00_data_prep", "01_loss_illustration", "02_training", "03_evaluation",
                     "04_ablation_k"):
        assert expected in stems, f"notebooks/{expected}.ipynb is missing"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_yaml_matches_its_notebook(profile):
    checked = check_profile(profile, NOTEBOOKS)
    # every notebook that has parameters beyond profile/results_dir gets a file in each profile,
    # so a profile never silently falls back to a notebook's smoke defaults
    stems = {p.stem for p in checked}
    for nb in NOTEBOOKS:
        extra = set(declared_parameters(nb)) - {"profile", "results_dir"}
        if extra:
            assert nb.stem in stems, f"params/{profile}/{nb.stem}.yaml is missing"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=IDS)
def test_notebook_committed_without_outputs(nb_path):
    nb = _read(nb_path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{nb_path.name} cell {i} has outputs; strip them"
            assert cell.execution_count is None, f"{nb_path.name} cell {i} has an exec count"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=IDS)
def test_notebook_structure(nb_path):
    nb = _read(nb_path)
    assert nb.metadata["kernelspec"]["name"] == "ageest"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{nb_path.name} must open with an H1 title"
    assert len(first.source.split("\n\n", 1)) == 2, f"{nb_path.name}: title needs a paragraph"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert "ageest.envinfo" in code_cells[0].source, "setup cell must report the environment"
    params = _parameters_cells(nb)
    assert len(params) == 1, f"{nb_path.name} needs exactly one cell tagged 'parameters'"
    for cell in code_cells:
        tree = ast.parse("\n".join(ln for ln in cell.source.splitlines()
                                   if not ln.lstrip().startswith(("%", "!"))))
        classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        assert not classes, f"{nb_path.name} defines a class; move it into the package"
        assert "sys.path" not in cell.source and "os.chdir" not in cell.source
    last = code_cells[-1].source
    assert "write_json" in last and f'"{nb_path.stem}.json"' in last, \
        f"{nb_path.name}: the last cell must write metrics/{nb_path.stem}.json"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=IDS)
def test_parameters_are_typed_commented_literals(nb_path):
    (cell,) = _parameters_cells(_read(nb_path))
    declared = declared_parameters(nb_path)
    assert {"profile", "results_dir"} <= set(declared)
    for line in cell.source.splitlines():
        if not line.strip():
            continue
        assert re.match(r"^\w+: [\w| .\[\],]+ = .+  # .+$", line), \
            f"{nb_path.name}: parameter line not `name: type = literal  # comment`: {line!r}"
        value = line.split(" = ", 1)[1].split("  # ", 1)[0]
        ast.literal_eval(value)  # a literal, not an expression
    assert declared["profile"]["default"].strip("\"'") == "smoke", \
        "notebook defaults must be the smoke profile"
    assert declared["results_dir"]["default"] in ('""', "''")


def test_unknown_key_names_key_file_and_notebook(tmp_path):
    (tmp_path / "smoke").mkdir()
    bad = tmp_path / "smoke" / "00_data_prep.yaml"
    bad.write_text("n_folds: 3\nnum_fold: 4\n")
    with pytest.raises(ReproduceError) as err:
        check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)
    message = str(err.value)
    assert "'num_fold'" in message and str(bad) in message and "00_data_prep.ipynb" in message
    # the pipeline refuses before executing anything
    with pytest.raises(ReproduceError, match="num_fold"):
        reproduce("smoke", params_dir=tmp_path, results_dir=tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out" / "executed").exists()


def test_wrong_type_and_unknown_notebook_file(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "00_data_prep.yaml").write_text("n_folds: three\n")
    with pytest.raises(ReproduceError, match="n_folds.*declares it as int"):
        check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)
    (tmp_path / "smoke" / "00_data_prep.yaml").write_text("profile: default\n")
    nb = next(n for n in NOTEBOOKS if n.stem == "00_data_prep")
    with pytest.raises(ReproduceError, match="set by `ageest reproduce`"):
        notebook_parameters("smoke", nb, out=tmp_path, params_dir=tmp_path)
    (tmp_path / "smoke" / "00_data_prep.yaml").unlink()
    (tmp_path / "smoke" / "99_nothing.yaml").write_text("x: 1\n")
    with pytest.raises(ReproduceError, match="names no notebook"):
        check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)


def test_overrides_reach_only_notebooks_that_declare_them(tmp_path):
    overrides = {"fgnet_dir": "/x", "device": "cuda", "workers": 3, "clap_dir": None}
    for nb in NOTEBOOKS:
        values = notebook_parameters("smoke", nb, out=tmp_path, overrides=overrides)
        declared = declared_parameters(nb)
        assert values["profile"] == "smoke" and values["results_dir"] == str(tmp_path)
        assert set(values) <= set(declared)
        for key, value in overrides.items():
            if key in declared and value is not None:
                assert values[key] == value


def test_paper_profile_needs_real_data(tmp_path):
    with pytest.raises(ReproduceError, match="--fgnet DIR and --clap DIR"):
        reproduce("paper", results_dir=tmp_path, log=lambda s: None)
    with pytest.raises(ReproduceError, match="no such folder"):
        reproduce("paper", fgnet=str(tmp_path / "nope"), clap=str(tmp_path),
                  results_dir=tmp_path, log=lambda s: None)


def test_unknown_profile(tmp_path):
    with pytest.raises(ReproduceError, match="unknown profile 'fast'"):
        reproduce("fast", results_dir=tmp_path, log=lambda s: None)


def test_params_folder_is_the_packages():
    assert paths.PARAMS.is_dir() and all((paths.PARAMS / p).is_dir() for p in PROFILES)


def test_shared_training_yaml_reaches_every_notebook_that_declares_its_keys(tmp_path):
    """params/<profile>/training.yaml states the recipe once: notebooks 02 and 04 (and 00 for
    the split, 01 for the weights) receive each key they declare; lists are YAML lists."""
    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    for profile in PROFILES:
        shared = read_params_file(paths.PARAMS / profile / SHARED_FILE)
        assert shared, f"params/{profile}/{SHARED_FILE} is empty"
        for stem in ("02_training", "04_ablation_k"):
            values = notebook_parameters(profile, by_stem[stem], out=tmp_path)
            declared = declared_parameters(by_stem[stem])
            for key, value in shared.items():
                if key == "clap_losses" and stem == "04_ablation_k":
                    assert key not in declared  # 04 trains no CLAP2016-format run
                    continue
                if key not in declared:  # a training setting without a parameter
                    assert values["train_options"][key] == value, (profile, stem, key)
                    continue
                if key == "train_options":  # the profile's, beside the settings routed there
                    assert value.items() <= values[key].items(), (profile, stem)
                    continue
                assert values[key] == value, (profile, stem, key)
    values = notebook_parameters("default", by_stem["02_training"], out=tmp_path)
    assert values["seeds"] == [0] and values["train_options"]["milestones"] == [8]
    assert values["losses"][:2] == ["amr", "mean_variance"]
    # the loss weights: the default profile leaves them to the losses' one default
    assert "lambda_mean" not in notebook_parameters("default", by_stem["01_loss_illustration"],
                                                    out=tmp_path)


def test_the_loss_weights_default_is_written_once(tmp_path):
    """λ1/λ2's default lives in the losses' constructors only: no notebook writes a number for
    it (None: that default) and only the paper profile, which pins the official scripts'
    values, sets one; the grids and the illustration resolve None to it."""
    from ageest.analysis.loss_illustration import Illustration
    from ageest.analysis.training_grids import training_settings
    from ageest.engine.grids import normalize_grid
    from ageest.losses import WEIGHT_SETTINGS, weight_default

    for nb in NOTEBOOKS:
        for name, spec in declared_parameters(nb).items():
            if name in WEIGHT_SETTINGS:
                assert spec["default"] == "None", (nb.name, name, spec["default"])
    for path in sorted(paths.PARAMS.glob("*/*.yaml")):
        values = read_params_file(path)
        set_here = sorted(set(values) & set(WEIGHT_SETTINGS))
        assert not set_here or path.parent.name == "paper", (path, set_here)
    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    for stem in ("02_training", "04_ablation_k"):
        params = {name: ast.literal_eval(spec["default"])
                  for name, spec in declared_parameters(by_stem[stem]).items()}
        values = notebook_parameters("default", by_stem[stem], out=tmp_path)
        grid = normalize_grid(training_settings({**params, **values}))
        for w in WEIGHT_SETTINGS:
            assert grid[w] == weight_default(w), (stem, w)
    setup = Illustration()
    assert setup.weights() == {w: weight_default(w) for w in WEIGHT_SETTINGS}
    assert Illustration(lambda_residue=0.1).lambda_residue == 0.1


def test_shared_file_rules(tmp_path):
    (tmp_path / "smoke").mkdir()
    shared = tmp_path / "smoke" / SHARED_FILE
    shared.write_text("epochs: 2\nseeds: [0, 1]\n")
    own = tmp_path / "smoke" / "02_training.yaml"
    own.write_text("epochs: 3\n")  # repeats a shared key: two values for one setting
    with pytest.raises(ReproduceError, match="epochs already set in training.yaml"):
        check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)
    own.write_text("folds: [0]\n")
    assert shared in check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)
    shared.write_text("epoch: 2\n")
    with pytest.raises(ReproduceError, match="'epoch' in .*training.yaml: no notebook declares"):
        check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)
    shared.write_text("seeds: [0, x]\n")
    with pytest.raises(ReproduceError, match="seeds.*declares it as list\\[int\\]"):
        check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)
    shared.write_text("seeds: [[0]]\n")
    with pytest.raises(ReproduceError, match="nested"):
        check_profile("smoke", NOTEBOOKS, params_dir=tmp_path)


def test_list_parameters_take_comma_text_on_the_command_line(tmp_path):
    nb = next(n for n in NOTEBOOKS if n.stem == "02_training")
    values = notebook_parameters("smoke", nb, out=tmp_path,
                                 text_overrides={"losses": "amr,ce", "seeds": "1,2",
                                                 "folds": ""})
    assert values["losses"] == ["amr", "ce"] and values["seeds"] == [1, 2]
    assert values["folds"] == []  # every fold


def test_notebook_annotations_agree_with_the_one_declaration():
    """A notebook parameter named like a setting (a grid key: epochs, lr, amp, lambda_mean ...)
    is annotated with that setting's kind, so `-p` converts it as the grid checks it; its value
    in every profile passes the setting's one check."""
    from ageest.analysis.training_grids import NOTEBOOK_AXES
    from ageest.engine.grids import SCHEMA
    from ageest.parameters import annotation_kind, check_value

    checked = 0
    for nb in NOTEBOOKS:
        for name, spec in declared_parameters(nb).items():
            if name not in SCHEMA or name in NOTEBOOK_AXES:
                continue  # a grid's axes, which a notebook names for one value of its own
            kind, item = annotation_kind(spec["inferred_type_name"])
            setting = SCHEMA[name]
            assert (kind, item if kind == "list" else "str") == (
                setting.kind, setting.item if setting.kind == "list" else "str"), (nb.name, name)
            checked += 1
            for profile in PROFILES:
                value = notebook_parameters(profile, nb, out=Path("/tmp")).get(name)
                check_value(setting, value, f"{profile}/{nb.stem}")
    assert checked >= 20


def test_a_training_setting_without_a_notebook_parameter_reaches_the_runs(tmp_path):
    """train_options carries any grid setting by name (here weight_decay, which no notebook
    declares) from a profile or `-p` to notebooks 02 and 04's grids, checked before the first
    notebook; a name that is a notebook parameter of its own, or no setting, is refused."""
    from ageest.analysis import training_grids
    from ageest.engine.grids import normalize_grid
    from ageest.pipeline.reproduce import ReproduceError, convert_parameter

    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    for stem in ("02_training", "04_ablation_k"):
        assert declared_parameters(by_stem[stem])["train_options"]["inferred_type_name"] == "dict"
    value = convert_parameter("train_options", "{weight_decay: 0.05}", "dict", "02_training")
    assert value == {"weight_decay": 0.05}
    params = {name: ast.literal_eval(spec["default"])
              for name, spec in declared_parameters(by_stem["02_training"]).items()}
    settings = training_grids.training_settings({**params, "train_options": value})
    assert normalize_grid(settings)["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="train_options: epochs is a notebook parameter"):
        training_grids.training_settings({**params, "train_options": {"epochs": 3}})
    # refused where they enter, naming the source, before any notebook runs
    with pytest.raises(ReproduceError, match="train_options in the command line: 'weight_decai' "
                                             "is not a training setting"):
        notebook_parameters("smoke", by_stem["02_training"], out=tmp_path,
                            text_overrides={"train_options": "{weight_decai: 0.05}"})
    with pytest.raises(ReproduceError, match="weight_decay: -1 is below the minimum"):
        notebook_parameters("smoke", by_stem["02_training"], out=tmp_path,
                            text_overrides={"train_options": "{weight_decay: -1}"})


def test_a_setting_outside_its_declaration_is_refused_naming_its_file(tmp_path):
    """A profile's training setting is checked against its declaration where it enters: the
    error names the file (not only the notebook), for a shared key, a notebook's own file, a
    CLAP2016-format twin (clap_epochs is epochs') and a registry name."""
    import shutil

    shutil.copytree(paths.PARAMS / "smoke", tmp_path / "mine")
    mine = tmp_path / "mine"
    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    cases = [(SHARED_FILE, "batch_size: 32", "batch_size: 0",
              r"'batch_size' in .*training.yaml: 0: grid key batch_size: 0 is below the minimum 1"),
             ("02_training.yaml", "clap_epochs: 1", "clap_epochs: 0",
              r"'clap_epochs' in .*02_training.yaml: 0: .*below the minimum 1"),
             ("02_training.yaml", "clap_losses: [amr, ce]", "clap_losses: [amr, nope]",
              r"'clap_losses' in .*02_training.yaml: .*unknown loss 'nope'")]
    for name, good, bad, message in cases:
        path = mine / name
        before = path.read_text()
        assert good in before, (name, good)
        path.write_text(before.replace(good, bad))
        with pytest.raises(ReproduceError, match=message):
            notebook_parameters("mine", by_stem["02_training"], out=tmp_path,
                                params_dir=tmp_path)
        with pytest.raises(ReproduceError, match=message):
            check_profile("mine", NOTEBOOKS, params_dir=tmp_path)
        path.write_text(before)
    check_profile("mine", NOTEBOOKS, params_dir=tmp_path)


def test_notebooks_02_and_04_declare_their_shared_parameters_alike():
    """Notebook 04 trains with notebook 02's settings (its AMR runs are 02's): every parameter
    both declare has the same type, default and comment, so the two cannot drift apart."""
    a = declared_parameters(paths.NOTEBOOKS / "02_training.ipynb")
    b = declared_parameters(paths.NOTEBOOKS / "04_ablation_k.ipynb")
    common = sorted(set(a) & set(b))
    assert len(common) >= 25  # the data, the split, the recipe a reader tunes, execution
    for name in common:
        for field in ("inferred_type_name", "default", "help"):
            assert a[name].get(field) == b[name].get(field), (name, field)


def test_every_notebook_parameter_is_checked_up_front_from_its_declaration(tmp_path):
    """`-p ci 1.5`, `-p n_boot -5`, `-p readout bogus` used to pass until notebook 03 ran (after
    all the training; readout as KeyError 'pred_bogus'), and empty losses until notebook 02.
    Every parameter of every notebook has a declaration: a grid setting, a pipeline parameter,
    or NOTEBOOK_LIMITS; a bad value in a profile file or on the command line stops
    check_profile, before the first notebook."""
    from ageest import metrics
    from ageest.analysis import comparisons
    from ageest.engine.grids import SCHEMA
    from ageest.pipeline.reproduce import _AS_GRID_KEY, NOTEBOOK_LIMITS, PIPELINE_PARAMETERS

    for nb in NOTEBOOKS:
        for name in declared_parameters(nb):
            assert (_AS_GRID_KEY.get(name, name) in SCHEMA or name in PIPELINE_PARAMETERS
                    or name in NOTEBOOK_LIMITS), f"{nb.name}: {name} has no declaration"
    # the choices written there are the library's own
    assert NOTEBOOK_LIMITS["readout"]["choices"] == metrics.READOUTS
    assert NOTEBOOK_LIMITS["paired_unit"]["choices"] == comparisons.PAIRED_UNITS

    import shutil

    shutil.copytree(paths.PARAMS / "smoke", tmp_path / "mine")
    own = tmp_path / "mine" / "03_evaluation.yaml"
    base = own.read_text() if own.is_file() else ""
    for line, message in (("ci: 1.5", r"'ci' in .*03_evaluation.yaml: 1.5: .*above the maximum 1"),
                          ("n_boot: -5", r"'n_boot' .*-5 is below the minimum 1"),
                          ("readout: bogus", r"'readout' .*'bogus' is not one of \['expectation'"),
                          ("reference: nope", r"'reference' .*'nope' is not one of \['amr'")):
        own.write_text(base + "\n" + line + "\n")
        with pytest.raises(ReproduceError, match=message):
            check_profile("mine", NOTEBOOKS, params_dir=tmp_path)
    own.write_text(base)
    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    with pytest.raises(ReproduceError, match=r"'losses' in the command line: empty"):
        notebook_parameters("mine", by_stem["02_training"], out=tmp_path, params_dir=tmp_path,
                            text_overrides={"losses": ""})
    with pytest.raises(ReproduceError, match=r"'ci' in the command line: 1.5"):
        notebook_parameters("mine", by_stem["03_evaluation"], out=tmp_path,
                            params_dir=tmp_path, text_overrides={"ci": "1.5"})


def test_a_training_setting_reaches_the_runs_from_its_declaration_alone(tmp_path, monkeypatch):
    """A training setting is forwarded because the grid schema declares it, not because a list
    names it: a setting no notebook declares (tta_flip; and one added in this test, as a new
    TrainConfig field would be) goes from a profile's training.yaml and from `-p` into notebooks
    02/04's train_options and on to their grids; an undeclared name is refused naming its
    source; a setting given twice (train_options and plain) is refused."""
    import dataclasses as dc

    from ageest.analysis import training_grids
    from ageest.engine import grids as grids_module
    from ageest.engine.grids import normalize_grid

    # a new setting, declared once (in the schema, as a TrainConfig field would put it there)
    extra = dc.replace(grids_module.SCHEMA["warmup_fraction"], name="label_smoothing",
                       default=0.0, minimum=0.0, maximum=1.0, above=False)
    monkeypatch.setitem(grids_module.SCHEMA, "label_smoothing", extra)
    monkeypatch.setitem(grids_module.GRID_DEFAULTS, "label_smoothing", 0.0)
    assert "label_smoothing" in training_grids.training_keys()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / SHARED_FILE).write_text("epochs: 1\ntta_flip: true\n")
    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    for stem in ("02_training", "04_ablation_k"):
        values = notebook_parameters("p", by_stem[stem], out=tmp_path, params_dir=tmp_path,
                                     text_overrides={"label_smoothing": "0.1"})
        assert values["train_options"] == {"tta_flip": True, "label_smoothing": 0.1}, stem
        params = {name: ast.literal_eval(spec["default"])
                  for name, spec in declared_parameters(by_stem[stem]).items()}
        grid = normalize_grid(training_grids.training_settings({**params, **values}))
        assert grid["tta_flip"] is True and grid["label_smoothing"] == 0.1
    # notebooks without train_options do not receive it, and the profile check passes
    assert "train_options" not in notebook_parameters("p", by_stem["00_data_prep"],
                                                      out=tmp_path, params_dir=tmp_path)
    assert check_profile("p", NOTEBOOKS, params_dir=tmp_path)
    with pytest.raises(ReproduceError, match="label_smoothing: 2.0 is above the maximum"):
        notebook_parameters("p", by_stem["02_training"], out=tmp_path, params_dir=tmp_path,
                            text_overrides={"label_smoothing": "2"})
    (tmp_path / "p" / SHARED_FILE).write_text("tta_flip: 3\n")
    with pytest.raises(ReproduceError, match="train_options in .*training.yaml.*tta_flip"):
        check_profile("p", NOTEBOOKS, params_dir=tmp_path)
    (tmp_path / "p" / SHARED_FILE).write_text("tta_flip: true\ntrain_options: {tta_flip: true}\n")
    with pytest.raises(ReproduceError, match="tta_flip in .*training.yaml is also in "
                                             "train_options; give it once"):
        notebook_parameters("p", by_stem["02_training"], out=tmp_path, params_dir=tmp_path)
    (tmp_path / "p" / SHARED_FILE).write_text("label_smoothin: 0.1\n")
    with pytest.raises(ReproduceError, match="'label_smoothin' in .*training.yaml: no notebook "
                                             "declares"):
        check_profile("p", NOTEBOOKS, params_dir=tmp_path)


def test_the_forwarded_settings_are_derived_from_the_schema():
    """Every TrainConfig field a grid sets is forwarded when a notebook holds it; the keys the
    grid builders set (data, split, selection, axes) never are."""
    import dataclasses as dc

    from ageest.analysis.training_grids import GRID_BUILT, training_keys, training_settings
    from ageest.engine.train import TrainConfig

    keys = set(training_keys())
    fields = {f.name for f in dc.fields(TrainConfig) if f.metadata.get("grid", True)}
    assert fields <= keys and not keys & set(GRID_BUILT)
    got = training_settings({"tta_flip": True, "split_csv": "x.csv", "dataset": ["a"],
                             "workers": 1, "unrelated": 3})
    assert got == {"tta_flip": True, "quiet": True, "workers": 1}


def test_each_value_is_checked_once_where_it_enters(monkeypatch, tmp_path):
    """A shared value was checked once per notebook declaring it in check_profile and again
    in each notebook's parameters (synthetic_size six times, a -p epochs value twice): now
    once where it enters (its file, or the command line), and every notebook still gets it."""
    from collections import Counter

    import ageest.engine.grids as grids_module
    import ageest.pipeline.reproduce as reproduce_module

    calls: Counter = Counter()
    real = reproduce_module.check_value

    def counting(setting, value, *args):
        calls[setting.name] += 1
        return real(setting, value, *args)

    monkeypatch.setattr(reproduce_module, "check_value", counting)
    monkeypatch.setattr(grids_module, "check_value", counting)
    plan = reproduce_module.plan_notebooks(
        "smoke", list_notebooks(), only=None, out=tmp_path, overrides={},
        parameters={"epochs": "2", "tta_flip": "true"})
    by_name = {nb.stem: values for nb, values in plan}
    assert [by_name[s]["synthetic_size"] for s in ("00_data_prep", "02_training",
                                                   "04_ablation_k")] == [64, 64, 64]
    assert by_name["02_training"]["epochs"] == by_name["04_ablation_k"]["epochs"] == 2
    assert by_name["04_ablation_k"]["train_options"] == {"tta_flip": True}
    assert calls["synthetic_size"] == 1 and calls["tta_flip"] == 1
    assert calls["epochs"] == 3  # training.yaml's, 02's clap_epochs, the command line's


def test_the_command_line_has_the_last_word_over_the_profiles_train_options(tmp_path):
    """The utkface profile routes milestones, lr_schedule ... into train_options beside its own
    {tta_flip: true}: `-p milestones 1` replaced nothing and stopped reproduce ("also in
    train_options"), and `-p train_options {...}` dropped the profile's routed settings. Now a
    -p value overrides the profile's, -p train_options adds to it, and one name given twice on
    the command line is refused."""
    from ageest.pipeline.reproduce import read_command_line

    nb = next(nb for nb in NOTEBOOKS if nb.stem == "02_training")
    cli = read_command_line({"milestones": "1", "train_options": "{weight_decay: 0.05}"}, [nb])
    values = notebook_parameters("utkface", nb, out=tmp_path, command_line=cli)
    options = values["train_options"]
    assert options["milestones"] == [1] and options["weight_decay"] == 0.05
    assert options["tta_flip"] is True and options["lr_schedule"] == "onecycle"  # the profile's
    twice = read_command_line({"milestones": "1", "train_options": "{milestones: [2]}"}, [nb])
    with pytest.raises(ReproduceError, match="-p milestones is also in -p train_options"):
        notebook_parameters("utkface", nb, out=tmp_path, command_line=twice)
