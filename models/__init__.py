"""Generative models, one file each. Importing this package registers every model."""
from models.base import GenerativeModel  # noqa: F401
from models.registry import build, load_plugins, model_class, names, register  # noqa: F401

# One import per model file: each registers itself.
from models import fvsbn, made, pixelcnn, realnvp, glow, ffjord, vae, cgan, ebm, ddpm  # noqa: F401,E402

load_plugins()
