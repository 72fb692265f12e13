"""Training: the one training loop and its checkpoints."""
