"""``ageest.parameters`` on its own: list text, the one text reader (:func:`parse_text`), the one
check (:func:`check_value`), annotations and the settings a dataclass declares."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ageest.parameters import (
    Setting,
    annotation_alternatives,
    annotation_kind,
    annotation_setting,
    as_list,
    check_value,
    int_list,
    parse_text,
    settings_of,
)

EPOCHS = Setting("epochs", 10, "int", "", minimum=1)
LR = Setting("lr", 1e-3, "float", "", minimum=0.0, above=True)
CI = Setting("ci", 0.95, "float", "", minimum=0.0, maximum=1.0, above=True)
LOSSES = Setting("losses", ["amr"], "list", "", choices=("amr", "ce"))
SEEDS = Setting("seeds", [0], "list", "", item="int", minimum=0)
CLIP = Setting("grad_clip", None, "float", "", minimum=0.0, optional=True)


def test_as_list_and_int_list_read_text_and_lists_alike():
    assert as_list(" amr , ce ,, ") == ["amr", "ce"]
    assert as_list(("a", "b")) == ["a", "b"] and as_list(None) == [] and as_list(7) == [7]
    assert int_list("1, 2", "folds") == [1, 2] and int_list([3.0], "folds") == [3]
    for bad in ("1,x", [1.5], [True]):
        with pytest.raises(ValueError, match="folds: .* is not an integer"):
            int_list(bad, "folds")


@pytest.mark.parametrize(("setting", "text", "value"), [
    (EPOCHS, "4", 4), (LR, "3e-4", 3e-4), (SEEDS, "0, 1,2", [0, 1, 2]),
    (Setting("pretrained", False, "bool", ""), "Yes", True),
    (Setting("pretrained", False, "bool", ""), "off", False),
    (CLIP, "none", None), (CLIP, "5", 5.0),
    (Setting("loss_kwargs", {}, "dict", ""), "{amr: {eps: 0.001}}", {"amr": {"eps": 0.001}}),
    (Setting("loss_kwargs", {}, "dict", ""), '{"amr": {"eps": 0.001}}', {"amr": {"eps": 0.001}}),
    (Setting("model", "small_cnn", "str", ""), "resnet50", "resnet50"),
])
def test_parse_text_reads_each_kind(setting, text, value):
    assert parse_text(setting, text) == value


@pytest.mark.parametrize(("setting", "text", "message"), [
    (EPOCHS, "four", r"-p epochs: 'four' is not an integer"),
    (LR, "fast", r"-p lr: 'fast' is not a number"),
    (SEEDS, "0,x", r"-p seeds: 'x' is not an integer"),
    (Setting("pretrained", False, "bool", ""), "maybe", r"is not true or false"),
    (Setting("loss_kwargs", {}, "dict", ""), "[1, 2]", r"is not a mapping"),
    (EPOCHS, "none", r"'none' is not an integer"),  # not optional: none is not the default
])
def test_parse_text_refuses_naming_the_setting(setting, text, message):
    with pytest.raises(ValueError, match=message):
        parse_text(setting, text)


def test_check_value_ranges_choices_and_kinds():
    assert check_value(EPOCHS, "3") == 3 and check_value(EPOCHS, None) is None
    assert check_value(SEEDS, "2,3") == [2, 3] and check_value(LOSSES, ["ce"]) == ["ce"]
    assert check_value(CI, 1.0) == 1.0
    for setting, value, message in (
            (EPOCHS, 0, r"grid key epochs: 0 is below the minimum 1"),
            (EPOCHS, 2.5, r"2.5 is not an integer"),
            (EPOCHS, True, r"True is not an integer"),
            (LR, 0.0, r"grid key lr: 0.0 is not above 0.0"),
            (CI, 1.5, r"1.5 is above the maximum 1.0"),
            (CI, math.inf, r"is not a finite number"),
            (LOSSES, ["amr", "nope"], r"'nope' is not one of \['amr', 'ce'\]"),
            (SEEDS, [-1], r"-1 is below the minimum 0"),
            (Setting("flag", False, "bool", ""), "yes", r"is not true or false")):
        with pytest.raises(ValueError, match=message):
            check_value(setting, value)
    with pytest.raises(ValueError, match=r"^-p epochs"):
        check_value(EPOCHS, -1, "-p")  # where the value came from leads the message


def test_annotations():
    assert annotation_alternatives("Optional[list[int]]") == ["list[int]", "None"]
    assert annotation_alternatives("float | None") == ["float", "None"]
    assert annotation_kind("list[float] | None") == ("list", "float")
    assert annotation_kind("dict") == ("dict", "str")
    setting = annotation_setting("lambda_mean", "Optional[float]")
    assert (setting.kind, setting.optional) == ("float", True)
    assert parse_text(setting, "none") is None and parse_text(setting, "0.2") == 0.2


def test_settings_of_reads_a_dataclass_declaration():
    @dataclasses.dataclass
    class Config:
        epochs: int = dataclasses.field(default=10, metadata={"help": "epochs", "min": 1})
        milestones: list[int] = dataclasses.field(default_factory=list,
                                                  metadata={"help": "steps", "min": 0})
        clip: float | None = dataclasses.field(default=None, metadata={"help": "clip"})
        hidden: int = 3  # no help: not a setting

    by_name = {s.name: s for s in settings_of(dataclasses.fields(Config))}
    assert set(by_name) == {"epochs", "milestones", "clip"}
    assert (by_name["epochs"].kind, by_name["epochs"].minimum) == ("int", 1)
    assert (by_name["milestones"].kind, by_name["milestones"].item,
            by_name["milestones"].default) == ("list", "int", [])
    assert by_name["clip"].optional and by_name["clip"].kind == "float"
    with pytest.raises(ValueError, match="below the minimum 1"):
        check_value(by_name["epochs"], 0)
