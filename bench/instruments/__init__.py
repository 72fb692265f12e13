"""How time, memory and work are measured, for training and evaluation alike: timing on a device, per-phase peak memory, FLOP counts."""
