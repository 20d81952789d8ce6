"""The training engine: a run's configuration and loop (train), one run into one folder (run),
grids of runs (grids, the `ageest run` command), the executors that run them (local pool, Ray),
the run files (store), the networks (models) and torchrun helpers (distributed)."""
