"""Variational autoencoders: a bound on the likelihood (ELBO) and an importance-weighted estimate."""
