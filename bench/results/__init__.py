"""What a run leaves, read back: the tables, numbers, plots, the report and the regression gate."""
