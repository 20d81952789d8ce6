"""The sub-commands of ``ageest`` (:mod:`ageest.cli` registers them), one module each, on top of
every other layer: each parses its arguments and calls the library (``run`` -> the grid runner,
``reproduce`` -> the papermill pipeline, ``data`` / ``fetch`` -> the data layer, ``predict`` /
``export`` -> inference, ``info`` -> the environment report). Nothing below imports them."""
