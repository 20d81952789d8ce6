"""Parameter values shared by notebooks, profiles, grids and the command line.

A list parameter (``losses``, ``seeds``, ``folds``, ``milestones``, ``ks`` ...) is a YAML list in a
profile file and a list literal in a notebook's parameters cell; the command line (``-p NAME a,b``,
``--losses a,b``) and older profiles give a comma string. :func:`as_list` reads both, and is the
one place that does.

``params/<profile>/training.yaml`` (:data:`SHARED_FILE`) holds the keys that several notebooks
declare (the training recipe of notebooks 02 and 04, the split that notebook 00 checks, the loss
weights notebook 01 illustrates): ``ageest reproduce`` passes each to every notebook that
declares it, so a profile states each value once.
"""

from __future__ import annotations

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
