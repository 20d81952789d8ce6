"""Data files shipped with the package (read with :mod:`importlib.resources`).

``paper_results.csv``: every number the report may cite from the paper, one row per
(artefact, dataset, protocol, method, metric), with the ``source`` it was taken from. An empty
``value`` means the number is not available and is shown as such, never filled in.
"""
