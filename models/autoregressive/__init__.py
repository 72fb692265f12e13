"""Autoregressive models: an exact likelihood by the chain rule, D sequential conditionals to sample."""
