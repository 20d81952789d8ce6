"""The paper's numbers that can be cited, and nothing else: ``ageest/resources/paper_results.csv``
read and checked (every value has its source), and the lookup the comparison tables and
``REPORT.md`` share. A base module: the analysis tables and the report both read it."""

from __future__ import annotations

import math
from importlib import resources

import pandas as pd

NOT_AVAILABLE = "not available"


def paper_results() -> pd.DataFrame:
    """The paper's numbers that can be cited, from ``ageest/resources/paper_results.csv``.

    Columns: ``artefact``, ``dataset``, ``protocol``, ``method``, ``metric``, ``value`` (float,
    NaN when not available) and ``source``.

    >>> table = paper_results()
    >>> row = table[(table.method == "amr") & (table.metric == "mae")].iloc[0]
    >>> float(row.value), row.source.startswith("as quoted by B. Kwon")
    (3.61, True)
    """
    with resources.files("ageest.resources").joinpath("paper_results.csv").open("r") as fh:
        table = pd.read_csv(fh, dtype={"value": float})
    required = {"artefact", "dataset", "protocol", "method", "metric", "value", "source"}
    if missing := required - set(table.columns):
        raise ValueError(f"ageest/resources/paper_results.csv lacks columns {sorted(missing)}")
    unsourced = table[table.value.notna() & (table.source.fillna("") == "")]
    if len(unsourced):
        raise ValueError("ageest/resources/paper_results.csv has values without a source: "
                         f"{unsourced.to_dict('records')}")
    return table


def paper_value(dataset: str, method: str, metric: str) -> tuple[float, str]:
    """``(value, source)`` of one paper number; ``(nan, "not available")`` when there is none.

    >>> paper_value("fgnet", "mean_variance", "mae")[0]
    4.1
    >>> paper_value("clap2016", "amr", "epsilon_error")
    (nan, 'not available')
    """
    table = paper_results()
    hit = table[(table.dataset == dataset) & (table.method == method) & (table.metric == metric)
                & table.value.notna()]
    if hit.empty:
        return math.nan, NOT_AVAILABLE
    return float(hit.value.iloc[0]), str(hit.source.iloc[0])
