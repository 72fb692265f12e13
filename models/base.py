"""The one small interface between the harness and every model.

A model owns its maths (loss, sampler, likelihood); the harness owns budgets, devices, seeds, timing
and metrics. Data arrive as float tensors N x C x H x W in the representation of the model's track:

- ``binary``: pixels in {0, 1} (the harness binarizes);
- ``8bit``: integer pixel values 0..255 stored as floats; a continuous model dequantizes them itself
  (``dequantize`` below), so that ``nll`` is the NLL of the *discrete* data (an upper bound for
  dequantized models) and bits/dim is ``nll / (D ln 2)`` on every track.
"""
from __future__ import annotations

import math

import torch
from torch import nn

FAMILIES = ("autoregressive", "vae", "gan", "flow", "ebm", "diffusion")
LIKELIHOODS = ("exact", "bound", "estimate", None)
TRACKS = ("binary", "8bit")


class GenerativeModel(nn.Module):
    """Base class. Subclasses set the class attributes and implement the methods below."""

    name: str = "model"
    family: str = "autoregressive"
    likelihood: str | None = None  # "exact" | "bound" | None
    track: str = "binary"  # "binary" | "8bit"
    conditional: bool = False
    num_classes: int = 10
    # Constructor settings that change only how samples are drawn, never training: a trained model may be
    # measured again with other values (``bench evaluate --sampler-args``).
    sampler_settings: tuple[str, ...] = ()
    # Image height and width must be multiples of this (at the default settings; e.g. a flow that squeezes
    # twice: 4). Any channel count C (1 grey, 3 colour). A model refuses other sides with a ValueError.
    side_multiple: int = 1
    # Training steps of the ``default`` budget: what a minute of training bought this model on the 2-core CPU
    # the suite is built on (one torch thread; docs/budgets.md), fixed here so that the default run trains
    # the same steps on any machine, however loaded. None: the default budget is 60 s of wall time instead.
    default_steps: int | None = None

    def __init__(self, image_shape=(1, 28, 28)):
        super().__init__()
        self.image_shape = tuple(image_shape)

    @property
    def dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- training -------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=1e-3)]

    def train_step(self, batch, optimizers) -> dict[str, float]:
        """One optimisation step on ``batch = (x, labels)``; returns at least ``{"loss": float}``.

        The default minimises the mean NLL; models with other objectives override it."""
        x, _ = batch
        (opt,) = optimizers
        loss = self.nll(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def training_state(self) -> dict:
        """State that training changes but ``state_dict`` does not hold (a checkpoint saves it). Default: none."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """Restore what ``training_state`` returned."""

    # --- evaluation -----------------------------------------------------------------------
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images in [0, 1], N x C x H x W."""
        raise NotImplementedError

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per example of the track's discrete data."""
        raise NotImplementedError(f"{self.name} has no tractable likelihood")

    @property
    def sampling_nfe(self) -> int:
        """Network evaluations (sequential steps) one batch of samples costs."""
        return 1

    def extra_metrics(self, x_test: torch.Tensor) -> list[dict]:
        """Model-specific evaluation rows, e.g. an importance-weighted bound.

        Each row: ``{"metric", "value", "unit", "kind"}``. Default: none."""
        return []

    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """Run-time checks that this trained model's numbers hold (shown in the report's checks section).

        Each check: ``{"check": name, "passed": bool, "value": float, "tolerance": float, "detail": str}``,
        e.g. the sampler's conditionals against the likelihood's, or inverse(forward(x)) against x.
        Cheap: a batch, seconds on a CPU. Default: none."""
        return []

    # True for adaptive solvers (their NFE grows with training): the scaling study times such models trained.
    sampling_cost_depends_on_weights: bool = False
    def sampling_flops(self, n: int) -> float | None:
        """FLOPs of ``sample(n)`` counted by hand, for samplers whose work torch's FLOP counter does not
        see (custom kernels, outer-product updates). None: let the harness count it."""
        return None


@torch.no_grad()
def sampler_conditionals_check(model, n: int = 16, tolerance: float = 1e-5, what: str = "p(x_i = 1 | x_<i)") -> dict:
    """The autoregressive self-check: on ``n`` fresh samples (seeded), the conditionals the sampler drew each
    pixel with (``what``: binary p(x_i = 1 | x_<i), or 8-bit tables over the 256 values) equal the
    likelihood's teacher-forced conditionals on the finished samples. The model provides
    ``sample_with_conditionals(n, generator=...)`` and ``conditionals(x)``, in the same layout."""
    x, used = model.sample_with_conditionals(n, generator=torch.Generator(model.device).manual_seed(0))
    gap = (model.conditionals(x) - used).abs().max().item()
    return {"check": "sampler_matches_likelihood", "passed": gap <= tolerance, "value": gap, "tolerance": tolerance,
            "detail": f"largest gap in {what} between the sampler and a teacher-forced pass of the "
                      f"likelihood, on {n} fresh samples"}


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization of 8-bit pixels: y = (x + u) / 256 with u ~ U[0, 1).

    A density p(y) on [0, 1]^D then gives log P(x) >= E_u[log p(y)] - D log 256, so the discrete
    NLL is bounded above by E[-log p(y)] + D log 256 (Theis et al. 2016)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + u) / 256.0


def discrete_nll_from_dequantized(nll_y: torch.Tensor, dim: int) -> torch.Tensor:
    """Turn -log p(y) of dequantized data into the upper bound on the discrete NLL in nats."""
    return nll_y + dim * math.log(256.0)


def bits_per_dim(nll_nats, dim: int):
    """bits/dim = nats / (D ln 2), on both tracks (8bit models already add D ln 256)."""
    return nll_nats / (dim * math.log(2.0))
