"""What a run is, before anything runs: the run configuration, budgets, model settings, a job and its hashes, provenance, errors and paths."""
