"""genbench: a benchmark of deep generative model families (see README.md)."""
__version__ = "0.1.0"
