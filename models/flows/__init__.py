"""Normalizing flows: an exact likelihood by the change of variables, one inverse pass (or an ODE) to sample."""
