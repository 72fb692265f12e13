"""Generative models, grouped by family, one file each. Importing this package registers every model."""
from models.base import GenerativeModel  # noqa: F401
from models.registry import build, load_plugins, model_class, names, register  # noqa: F401

# One import per model file: each registers itself. The order is the families' order in every table.
from models.autoregressive import fvsbn, made, made_8bit, pixelcnn, pixelcnn_8bit  # noqa: F401,E402
from models.flows import realnvp, glow, ffjord, flow_matching  # noqa: F401,E402
from models.vae import vae, vae_8bit  # noqa: F401,E402
from models.gan import cgan  # noqa: F401,E402
from models.ebm import ebm  # noqa: F401,E402
from models.diffusion import ddpm  # noqa: F401,E402

load_plugins()
