"""Diffusion models: a variational bound on the likelihood, sampled by iterative denoising."""
