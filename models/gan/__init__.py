"""Generative adversarial networks: samples without a likelihood."""
