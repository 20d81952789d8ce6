"""Parameter values shared by notebooks, profiles, grids and the command line.

A list parameter (``losses``, ``seeds``, ``folds``, ``milestones``, ``ks`` ...) is a YAML list in a
profile file and a list literal in a notebook's parameters cell; the command line (``-p NAME a,b``,
``--losses a,b``) and older profiles give a comma string. :func:`as_list` reads both, and is the
one place that does.

``params/<profile>/training.yaml`` (:data:`SHARED_FILE`) holds the keys that several notebooks
declare (the training recipe of notebooks 02 and 04, the split that notebook 00 checks): ``ageest reproduce`` passes each to every notebook that
declares it, so a profile states each value once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SHARED_FILE = "training.yaml"


def as_list(value: Any) -> list:
    """A list parameter's items: a list or tuple as is, a comma string split (blank items
    dropped), ``None`` or ``""`` empty, one scalar as a one-item list.

    >>> as_list("amr, ce"), as_list(["amr", "ce"]), as_list(""), as_list(3)
    (['amr', 'ce'], ['amr', 'ce'], [], [3])
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def int_list(value: Any, name: str) -> list[int]:
    """:func:`as_list` of integers; an item that is not one is an error naming ``name``.

    >>> int_list("15,30", "milestones"), int_list([0, 1], "folds")
    ([15, 30], [0, 1])
    """
    out = []
    for item in as_list(value):
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            out.append(int(item))
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {item!r} is not an integer") from None
    return out


# ---------------------------------------------------------------------------------------------
# one declaration per setting, one check: the grid schema, TrainConfig, the `ageest run` flags,
# `-p` and the profiles all read a Setting


@dataclass(frozen=True)
class Setting:
    """One setting: its name, default, kind, help, choices and range, declared once.

    ``kind`` is ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"list"`` or ``"dict"`` (``item``:
    the kind of a list's items). ``minimum`` is inclusive unless ``above`` (then the value must
    be greater: a learning rate). ``None`` is always accepted: it means the default.
    """

    name: str
    default: Any
    kind: str
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    item: str = "str"
    above: bool = False
    optional: bool = False  # the text "none" means None (the default, or "not set")


def annotation_alternatives(text: str) -> list[str]:
    """The members of a type annotation: ``"list[int] | None"`` -> ``["list[int]", "None"]``
    (``Optional[X]`` -> ``["X", "None"]``). The one parser of annotations (the notebooks' as
    papermill reports them, and :class:`~ageest.engine.train.TrainConfig`'s fields).

    >>> annotation_alternatives("Optional[list[int]]"), annotation_alternatives("int | None")
    (['list[int]', 'None'], ['int', 'None'])
    """
    text = text.strip()
    if text.startswith("Optional[") and text.endswith("]"):
        return [*annotation_alternatives(text[len("Optional["):-1]), "None"]
    return [t.strip() for t in text.split("|")]


def annotation_kind(text: str) -> tuple[str, str]:
    """``(kind, item)`` of an annotation, ``None`` left out: ``"list[int] | None"`` ->
    ``("list", "int")``; ``"dict[str, Any]"`` -> ``("dict", "str")``.

    >>> annotation_kind("list[int] | None"), annotation_kind("float")
    (('list', 'int'), ('float', 'str'))
    """
    alt = next((a for a in annotation_alternatives(text) if a not in ("None", "NoneType")), "str")
    kind, _, item = alt.partition("[")
    item = item.rstrip("]") if kind == "list" else ""
    return kind, item or "str"


def annotation_setting(name: str, annotation: str | None) -> Setting:
    """The :class:`Setting` an annotation alone declares (a notebook parameter that is no
    training setting: its parameters cell is its one declaration), for :func:`parse_text`.

    >>> annotation_setting("split_fractions", "list[float]").item
    'float'
    """
    kind, item = annotation_kind(annotation or "str")
    return Setting(name, None, kind, "", item=item,
                   optional="None" in annotation_alternatives(annotation or "str"))


def settings_of(fields) -> list[Setting]:
    """The :class:`Setting` of each dataclass field whose metadata carries ``help`` (choices,
    ``min``, ``max``, ``above`` from the metadata, kind from the annotation)."""
    import dataclasses

    out = []
    for f in fields:
        if "help" not in f.metadata:
            continue
        kind, item = annotation_kind(str(f.type))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        out.append(Setting(f.name, default, kind, f.metadata["help"],
                           choices=f.metadata.get("choices"), minimum=f.metadata.get("min"),
                           maximum=f.metadata.get("max"), item=item,
                           above=bool(f.metadata.get("above")),
                           optional="None" in annotation_alternatives(str(f.type))))
    return out


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_text(setting: Setting, text: str, where: str = "-p") -> Any:
    """The text of a setting given on a command line (``-p NAME VALUE``, an ``ageest run``
    flag) as the kind its declaration names; the one reader of such text. Ranges and choices
    are :func:`check_value`'s (the boundary's one check), not this function's.

    ``str`` keeps the text; ``bool`` takes true/false (yes/no, 1/0, on/off); ``int`` and
    ``float`` parse; ``list`` splits on commas and parses each item as ``item``; ``dict`` is a
    YAML flow mapping (JSON is one); ``none``/``null`` is ``None`` for an optional setting.

    >>> parse_text(Setting("epochs", 10, "int", ""), "4"), parse_text(
    ...     Setting("milestones", [], "list", "", item="int"), "15, 30")
    (4, [15, 30])
    >>> parse_text(Setting("pretrained", False, "bool", ""), "maybe")
    Traceback (most recent call last):
    ...
    ValueError: -p pretrained: 'maybe' is not true or false (true/false, yes/no, 1/0, on/off)
    """
    name, kind, low = setting.name, setting.kind, text.strip().lower()
    prefix = f"{where} " if where else ""
    if setting.optional and low in ("none", "null"):
        return None
    if kind == "bool":
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"{prefix}{name}: {text!r} is not true or false "
                         "(true/false, yes/no, 1/0, on/off)")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{prefix}{name}: {text!r} is not an integer") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{prefix}{name}: {text!r} is not a number") from None
    if kind == "list":
        one = Setting(name, None, setting.item, "")
        return [parse_text(one, part.strip(), where) for part in text.split(",") if part.strip()]
    if kind == "dict":
        import yaml

        try:
            value = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"{prefix}{name}: {text!r} is not a mapping such as "
                             "{weight_decay: 0.05}")
        return value
    return text  # str, and kinds not modelled here


def _integer(where: str, value: Any, setting: Setting) -> int:
    """An integer (``2``, ``"2"``), never a truncated float (``2.7``) or a bool."""
    ok = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit()) or (
        isinstance(value, float) and value.is_integer())
    if not ok:
        raise ValueError(f"{where} {setting.name}: {value!r} is not an integer")
    out = int(value)
    _check_range(where, setting, out, value)
    return out


def _check_range(where: str, setting: Setting, out: float, value: Any) -> None:
    lo, hi = setting.minimum, setting.maximum
    if lo is not None and (out < lo or (setting.above and out == lo)):
        raise ValueError(f"{where} {setting.name}: {value!r} is "
                         + (f"not above {lo}" if setting.above else f"below the minimum {lo}"))
    if hi is not None and out > hi:
        raise ValueError(f"{where} {setting.name}: {value!r} is above the maximum {hi}")


def check_value(setting: Setting, value: Any, where: str = "grid key") -> Any:
    """``value`` as ``setting``'s kind, inside its range and choices, or a ``ValueError`` that
    names ``where`` and the setting (``grid key epochs: 'two' is not an integer``). Comma text
    becomes a list. ``None`` passes (the default applies).

    >>> check_value(Setting("epochs", 10, "int", "", minimum=1), "3")
    3
    >>> check_value(Setting("lr", 1e-3, "float", "", minimum=0.0, above=True), 0.0)
    Traceback (most recent call last):
    ...
    ValueError: grid key lr: 0.0 is not above 0.0
    """
    if value is None:
        return None
    name, kind = setting.name, setting.kind
    if kind == "int":
        return _integer(where, value, setting)
    if kind == "float":
        try:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} {name}: {value!r} is not a number") from None
        if not math.isfinite(out):
            raise ValueError(f"{where} {name}: {value!r} is not a finite number")
        _check_range(where, setting, out, value)
        return out
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} {name}: {value!r} is not true or false")
        return value
    if kind == "list":
        items = as_list(value)
        if setting.item == "int":
            items = [_integer(where, v, setting) for v in items]
        elif setting.item == "float":
            items = [check_value(Setting(name, None, "float", "", minimum=setting.minimum,
                                         maximum=setting.maximum), v, where) for v in items]
        for item in items:
            if setting.choices and item not in setting.choices:
                raise ValueError(f"{where} {name}: {item!r} is not one of "
                                 f"{list(setting.choices)}")
        return items
    if kind == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"{where} {name}: expected a mapping, e.g. {{amr: {{eps: 0.001}}}}")
        return value
    if setting.choices and value not in setting.choices:
        raise ValueError(f"{where} {name}: {value!r} is not one of {list(setting.choices)}")
    return value
