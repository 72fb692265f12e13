"""Energy-based models: an unnormalised density, sampled by Langevin dynamics."""
