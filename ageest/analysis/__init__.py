"""What the notebooks compute, by what it computes: data and split summaries (data_summary),
the loss illustration and its explorer (loss_illustration, loss_explorer), the training grids
(training_grids) and every comparison table and statistic (comparisons)."""
