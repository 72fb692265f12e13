"""The metric registry: one declaration per metric, read by `bench list`, `compare` and the report.

A metric is declared once with its unit, its direction (``lower`` or ``higher`` is better, or ``None``
for figures with no better side, such as a parameter count), the tolerance `bench compare` allows
before calling a change a regression (``max(rel * |baseline|, abs)`` in the bad direction), whether it
is gated in CI at all, the decimals the report shows, and a one-line meaning. A new metric is one
``declare(...)`` call here; a measurement that emits a row with an undeclared name fails its test.

Tolerances follow each metric's noise: likelihoods under a step budget repeat to ~1e-8 on a CPU, so 1%
catches a changed default and leaves room for another machine's arithmetic; sample-quality scores from
~1,000 samples move a little with a few flipped pixels; speed on a shared machine swings by factors, so it
only fails below 0.3x; what a budget bought (steps, seconds, parameters) is shown, never gated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


def row(metric: str, value: float, unit: str, kind: str = "measured", **extra) -> dict:
    """One metric row as a measurement emits it; the runner adds the identifying columns (model, seed, ...)."""
    return {"metric": metric, "value": float(value), "unit": unit, "kind": kind, **extra}


@dataclass(frozen=True)
class Rule:
    """How one metric is judged: which way is better, and how much worse is still noise."""

    direction: str | None  # "lower" | "higher" | None (no better side: params, steps)
    rel: float = 0.0  # fraction of |baseline|
    abs: float = 0.0  # in the metric's unit
    gated: bool = True  # False: shown, never a regression
    # Against a history (``bench compare --history``) the series' own spread says how noisy the metric is,
    # so the registry's part of the band can be narrower: None keeps ``rel``.
    history_rel: float | None = None
    # "log": the metric's noise is a factor (speed, memory), so a history's spread is taken of its logarithm.
    scale: str = "linear"

    def band(self, baseline: float) -> float:
        return max(self.rel * abs(baseline), self.abs)

    def history_band(self, reference: float) -> float:
        rel = self.rel if self.history_rel is None else self.history_rel
        return max(rel * abs(reference), self.abs)

    def describe(self) -> str:
        """The band as the allowed worsening: ``+1%`` (may rise 1%), ``-70%`` (may fall to 0.3x)."""
        if not self.gated or self.direction is None:
            return "-"
        sign = "+" if self.direction == "lower" else "-"
        parts = ([f"{sign}{100 * self.rel:.3g}%"] if self.rel else []) + ([f"{sign}{self.abs:.3g}"] if self.abs else [])
        return " or ".join(parts) if parts else "0"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    rule: Rule
    meaning: str
    decimals: int | None = None  # None: three significant digits
    scored_by_classifier: bool = False  # defined by the evaluation classifier's features: compare within one

    @property
    def direction(self) -> str | None:
        return self.rule.direction


REGISTRY: dict[str, Metric] = {}


def declare(name: str, unit: str, rule: Rule, meaning: str, decimals: int | None = None,
            scored_by_classifier: bool = False) -> Metric:
    if name in REGISTRY:
        raise ValueError(f"metric {name!r} declared twice")
    REGISTRY[name] = Metric(name, unit, rule, meaning, decimals, scored_by_classifier)
    return REGISTRY[name]


def scored_by_classifier(metric: str) -> bool:
    """Whether the figure depends on the evaluation classifier (``fid@steps=20`` like ``fid``): two such
    figures compare only when one classifier scored both."""
    declared = REGISTRY.get(metric.split("@")[0])
    return bool(declared and declared.scored_by_classifier)


def get(name: str) -> Metric | None:
    return REGISTRY.get(name)


def is_declared(name: str) -> bool:
    return name in REGISTRY


LIKELIHOOD = Rule("lower", rel=0.01)
SAMPLE_DISTANCE = Rule("lower", rel=0.10, abs=0.5)
FRACTION = Rule("higher", abs=0.05)
# Speed fails only below 0.3x of one baseline; against a history, whose spread is the machine's noise, below
# 0.9x of the median or past the series' own prediction band, whichever is wider (bench.results.history.gate).
SPEED = Rule("higher", rel=0.70, history_rel=0.10, scale="log")
INFO_LOWER = Rule("lower", gated=False)
INFO = Rule(None, gated=False)
MEMORY = Rule("lower", rel=0.50, history_rel=0.10, scale="log")  # resident memory moves with thread count and libraries


def rule_for(metric: str) -> Rule:
    """The declared rule; an undeclared model-specific likelihood named like ``*_nll``, ``*_bpd`` or
    ``iwae*`` is judged like ``test_nll``; anything else undeclared is shown, never gated."""
    metric = metric.split("@")[0]  # fid@steps=20, a point of the steps curve, is judged like fid
    if metric in REGISTRY:
        return REGISTRY[metric].rule
    if re.search(r"(^|_)(iwae|nll|bpd)(_|$|\d)", metric):
        return LIKELIHOOD
    return INFO


# --- likelihood -------------------------------------------------------------------------------------
declare("test_nll", "nats", LIKELIHOOD, "negative log-likelihood per test example (kind: exact, bound or estimate)", 2)
declare("test_bpd", "bits/dim", LIKELIHOOD,
        "test_nll / (D ln 2); the 8bit track includes the D ln 256 dequantization term", 3)
declare("test_nll_iwae", "nats", LIKELIHOOD, "importance-weighted NLL estimate (VAE), K in the note", 2)
declare("test_bpd_iwae", "bits/dim", LIKELIHOOD, "importance-weighted estimate in bits/dim (VAE)", 3)
declare("test_nll_ode", "nats", LIKELIHOOD, "DDPM: the dequantization bound on the discrete NLL from the "
        "probability-flow ODE of the same trained network (Song et al. 2021), images and probes in the note", 2)
declare("test_bpd_ode", "bits/dim", LIKELIHOOD, "test_nll_ode in bits/dim (beside the VLB's test_bpd)", 3)
# --- sample quality: every figure here is defined by the evaluation classifier's features or logits ----
def declare_quality(name: str, unit: str, rule: Rule, meaning: str, decimals: int | None = None) -> Metric:
    return declare(name, unit, rule, meaning, decimals, scored_by_classifier=True)


declare_quality("fid", "", SAMPLE_DISTANCE, "Frechet distance of evaluation-classifier features, samples vs the "
                "reference set", 2)
declare_quality("fid_wide", "", SAMPLE_DISTANCE, "FID in the second feature space: the evaluation classifier's "
                "network twice as wide, another seed, the same split (Stein et al. 2023: rankings move with the encoder)", 2)
declare_quality("intra_fid", "", SAMPLE_DISTANCE, "conditional models: the mean over classes of the FID between "
                "a class's samples and its reference images (intra-class FID, as StudioGAN reports it)", 2)
declare_quality("fid_inf", "", SAMPLE_DISTANCE, "FID extrapolated to infinitely many samples (Chong & Forsyth "
                "2020): fit FID_N = FID_inf + k/N over subsets", 2)
declare_quality("copy_rate", "fraction", Rule("lower", abs=0.05),
                "samples closer to a training image than 99% of held-out real images are (pixels with +-1 shifts, "
                "or classifier features)", 3)
declare_quality("kid", "", Rule("lower", rel=0.25, abs=0.01), "kernel inception distance on the same features", 4)
declare_quality("is", "", Rule("higher", rel=0.10), "inception score from the evaluation classifier's logits", 2)
declare_quality("precision", "fraction", FRACTION, "improved precision (k-NN manifold) of samples", 3)
declare_quality("recall", "fraction", FRACTION, "improved recall (k-NN manifold) of samples", 3)
declare_quality("density", "", Rule("higher", rel=0.10, abs=0.05), "density (Naeem et al. 2020): real k-NN balls "
                "holding a sample, per sample, / k; 1 for samples from the data's distribution", 3)
declare_quality("coverage", "fraction", FRACTION, "coverage (Naeem et al. 2020): real k-NN balls holding at least "
                "one sample", 3)
declare_quality("class_accuracy", "fraction", FRACTION, "conditional models: classifier agrees with the requested "
                "label", 3)
# --- cost -------------------------------------------------------------------------------------------
declare("sample_throughput", "samples/s", SPEED, "sampling speed at the batch size in the `batch` column")
declare("sampling_nfe", "evaluations", INFO, "sequential network evaluations one sample costs", 0)
declare("train_throughput", "examples/s", SPEED, "training examples per second over the budget")
declare("train_seconds", "s", INFO_LOWER, "training wall time (under a step budget: examples / throughput)")
declare("train_steps", "steps", INFO, "optimisation steps the budget bought")
declare("train_examples", "examples", INFO, "training examples seen")
declare("train_flops", "FLOP", INFO, "matmul/conv FLOPs of training, forward and backward (torch FlopCounterMode; "
        "elementwise ops not counted)")
declare("peak_memory", "MiB", MEMORY, "the larger of peak_memory_train and peak_memory_sample (evaluation excluded)", 0)
declare("peak_memory_train", "MiB", MEMORY,
        "peak during training; CPU: the job's own resident set (VmHWM reset at the phase start: interpreter and "
        "libraries included); GPU: torch-allocated tensors", 0)
declare("peak_memory_sample", "MiB", MEMORY,
        "peak while sampling at the batch size in the `batch` column (same measure)", 0)
declare("best_epoch", "epochs", INFO, "--early-stopping: the epoch whose weights were kept (best validation NLL)", 0)
declare("valid_nll", "nats", INFO, "--early-stopping: validation NLL of the kept weights", 2)
declare("params", "count", INFO, "trainable parameters", 0)
# --- ODE flows (FFJORD): solver cost and the trace estimator's Monte Carlo error, shown, never gated -----
declare("nll_nfe", "evaluations", INFO, "measured mean function evaluations per likelihood solve", 0)
declare("train_nfe", "evaluations", INFO, "measured mean function evaluations per training forward solve", 1)
declare("solver_rtol", "", INFO, "the adaptive solver's relative tolerance for nll and sampling")
declare("nll_probe_se", "nats", INFO, "standard error of test_nll from the Hutchinson trace probes alone")
declare("bpd_probe_se", "bits/dim", INFO, "nll_probe_se in bits/dim")
