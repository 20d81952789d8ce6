"""What the notebooks compute, by what it computes: data and split summaries (data_summary),
the loss illustration (loss_illustration; its interactive explorer is ageest.plots.loss_explorer), the training grids
(training_grids) and every comparison table and statistic (comparisons)."""
