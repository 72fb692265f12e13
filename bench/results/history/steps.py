"""Steps in a metric's history: where a run-after-run series moved to a new level, and how sure that is.

Method. The series is fitted by a piecewise-constant function, the fit chosen to minimise

    sum over segments of  sum_i w_i (y_i - mu_w)^2   +   penalty * (number of steps),

with ``w_i = 1 / sigma_i^2`` and ``mu_w`` the segment's weighted mean (asv's step detection is the same
penalised least-squares idea). The cost is in units of the noise, so a segment that is noise alone costs
about one per point (a chi-square) whatever the metric's unit, and a single penalty serves every metric.
A segment has at least two points: one point apart from its neighbours is an outlier, not a new level.
NaN (or None) points are left out of the fit; a step's ``index`` is still a position in the sequence given.

Noise. Each point's sigma is ``max(series noise, its own standard error, noise_floor)``. The series noise
is the median absolute first difference over ``0.6745 * sqrt(2)`` (the SD of the difference of two
Gaussian points is ``sqrt(2)`` sigma, and 0.6745 SD is the median of a Gaussian's absolute value): a step
moves one difference only, so the estimate does not grow with the steps it is looking for. A series that
repeats exactly has no noise at all; then sigma falls to ``RESOLUTION`` (1e-6) times the series' range,
so that any real change is a step (its z is then a million or more) and no weight is infinite. The same
floor keeps the cumulative sums of the cost well inside float64 precision: no point weighs more than
``1e12`` over the squared range.

Penalty, in chi-square units: ``(a + b * log(n)) * (1 + c / n)**3`` with n the finite points, a = 8.5,
b = 1.86, c = 9.1, calibrated for a false step in about 0.1% of noise-only series (a store holds some 150
noisy series at once: at 1% each, every listing would show one or two false steps). The first factor is
about what a series whose noise were known would need (the measured 99.9% quantile of the best
segmentation's gain per step, with the true sigma: 13.4, 14.9, 15.9, 16.8, 17.3 at n = 8, 15, 30, 60, 100,
200,000 series each); the second makes room for the noise being estimated from the same n points (the
estimate's relative SD is about 1.3 / sqrt(n), measured) and fades as 1/n. The three constants were fitted
(least squares on the log) to the 99.9% quantile, over 200,000 Gaussian noise-only series per n (seed 11;
n = 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100), of the smallest penalty that leaves each series
without a step (whole pipeline, noise estimated each time; the smallest penalty found by bisection on
ruptures' PELT search, ported one for one to numba and checked against it: with segments of at least
two points its pruning is not exact, and it keeps a step at a penalty above the exact optimum's in 5.8%
of series at n = 8 and 0.07% at n = 100 (20,000 series each), all at penalties under 0.7 times the one
used, so that the exact optimum's 99.9% quantiles are the same). On those series the rate is 0.08-0.12%
at every n of the fit; at n = 9, 11, 13, 14, 16, 17, 35, 45, 70, 90 (100,000 series each, seed 13)
0.05-0.11%. At a small n the series of an odd n come out lower (0.05% at n = 9, against 0.11% at 8 and
0.10% at 10): their noise estimate is the mean of the two middle differences, which falls near zero less
often than one middle difference does.

Why the cube: at 0.1% the series that get a false step are those whose noise came out low (their median
noise estimate is 0.15, 0.49, 0.78 of the true sigma at n = 8, 30, 100), and the low tail of the estimate
from a few points is long: the 99.9% quantile is 9.6, 3.5, 2.07, 1.46, 1.27 times the known-noise one at
n = 8, 15, 30, 60, 100, which ``1 + c/n`` follows only with c = 69, 37, 32, 27, 27, and ``(1 + c/n)**3``
with c = 9.0, 7.7, 8.2, 8.0, 8.3. The form of the 1% calibration, ``(a + b * log(n)) * (1 + c / n)``,
refitted to the 99.9% quantile, gives 0.16% at n = 8 and 0.21% at n = 100 (with b = -1.3, a penalty that
falls with n). Searched over a grid of a, b, c for 0.05-0.15% at every n of the fit, it gets there only at
0.145-0.150% at n = 8 and 0.13-0.15% at n = 100 with 0.05% in between, and then gives 0.30-0.43% at
n = 200 and 0.6-1.6% at n = 400; the cube's fit gives 0.07% and 0.06% there (below).

Measured false-alarm rate (the fraction of noise-only Gaussian series with at least one step), with the
whole pipeline, 40,000 series per n, seed 1 (not the seed of the fit):

    n       8       15      30      60      100
    rate  0.093%  0.065%  0.113%  0.073%  0.115%     (binomial SE 0.016%)

measured with ``python -c "from bench.results.history.steps import simulate_false_alarm_rate as f;
print([f(n, n_series=40000, seed=1) for n in (8, 15, 30, 60, 100)])"``. Beyond the range of the fit,
series of the same kind give 0.073% at n = 200 and 0.060% at n = 400 (30,000 series each, seed 12).
``FALSE_ALARM_RATE`` (0.2%) is an upper bound: above every rate measured here, by three binomial SEs or
more. Per-point standard errors and a noise floor only raise sigmas above the estimate, so with them the
rate is lower still; noise that is not Gaussian, or that drifts, raises it.

Power, the price of the lower false-alarm rate: a single step of 3 noise SDs in a 30-point series is found
within one point of where it is in 76.4% (k = 8), 87.3% (k = 15) and 75.0% (k = 22) of 2,000 series each
(94.0%, 96.3%, 93.9% with the 1% penalty), measured with ``simulate_detection_rate(k, n_series=2000,
seed=2)`` (at exactly k in 66.8%, 75.9%, 66.5%; with a second, spurious step as well in 0.0-0.1%). The
misses are steps not found (21.4%, 10.0%, 22.8%: a 3-SD step's chi-square, 9 * k * (30 - k) / 30 with the
true sigma, is 53 at k = 8 and 68 at k = 15, against a penalty of 32.8 at n = 30, and the noise estimated
high from 30 points lowers it further) and steps found two or more points off (2.3%, 2.8%, 2.3%): at 3 SD
that is mostly the noise itself, a least-squares fit of one step with the true sigma is two or more
points off in 3.0-3.3% of series too (4,000 series, seed 4). A step of 4 SD is found within one point in
97.1%, 99.2%, 96.8% (``step_sds=4.0``, 2,000 series, seed 3).

Why ruptures: its PELT search is exact for a penalised cost (with segments of two points or more, nearly
so: see above) and prunes the candidates a segmentation can no longer use, and a custom cost
(``WeightedL2Cost``) plugs into it; the cost here is O(1) per segment from cumulative sums (prepared in
``fit``), so a history of 100 points takes about 6 ms, 400 points 60 ms, 1,000 points 0.6 s (the search
itself is pure Python).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ruptures as rpt
from ruptures.base import BaseCost

PENALTY_BASE = 8.5           # a: the chi-square penalty per step for a series of known noise ...
PENALTY_PER_LOG_POINT = 1.86  # b: ... growing with log(n), the places a step could be
NOISE_ESTIMATE_POINTS = 9.1   # c: the inflation (1 + c/n)**3 for noise estimated from the n points themselves
NOISE_ESTIMATE_POWER = 3      # ... cubed: the estimate's low tail is long at a small n (see above)
FALSE_ALARM_RATE = 0.002      # an upper bound of the measured rates at n = 8..100 (see above)
MIN_POINTS = 4                # two segments of MIN_SEGMENT points
MIN_SEGMENT = 2
MAD_TO_SD = 0.6745            # median |x| of a standard Gaussian
RESOLUTION = 1e-6             # the smallest sigma, as a fraction of the series' range


@dataclass(frozen=True)
class Step:
    index: int      # index (into the ORIGINAL values sequence) of the first point after the step
    before: float   # weighted mean of the segment before the step
    after: float    # weighted mean of the segment after
    z: float        # (after - before) / standard error of that difference (signed); "how sure"


class WeightedL2Cost(BaseCost):
    """``sum_i w_i (y_i - mu_w)^2`` over a segment; the signal's columns are the values and the weights."""

    model = "weighted_l2"
    min_size = MIN_SEGMENT

    def fit(self, signal) -> "WeightedL2Cost":
        self.signal = signal
        values, weights = signal[:, 0], signal[:, 1]
        centred = values - (values.max() + values.min()) / 2  # small sums: less cancellation in error()
        # plain lists: ruptures calls error() once per candidate pair, and list indexing beats numpy's
        self.weight_sums = prefix_sums(weights)
        self.moment_sums = prefix_sums(weights * centred)
        self.square_sums = prefix_sums(weights * centred**2)
        return self

    def error(self, start, end) -> float:
        weight = self.weight_sums[end] - self.weight_sums[start]
        moment = self.moment_sums[end] - self.moment_sums[start]
        square = self.square_sums[end] - self.square_sums[start]
        return max(square - moment * moment / weight, 0.0)  # rounding can leave a flat segment at -1e-12


def prefix_sums(x: np.ndarray) -> list[float]:
    return np.concatenate([[0.0], np.cumsum(x)]).tolist()


def as_floats(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def noise_sigma(values) -> float:
    """robust noise SD from first differences: median(|diff|) / (0.6745 * sqrt(2)); ignores NaN."""
    finite = as_floats(values)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return math.nan
    return float(np.median(np.abs(np.diff(finite))) / (MAD_TO_SD * math.sqrt(2)))


def point_sigmas(values: np.ndarray, sigmas: np.ndarray | None, noise_floor: float) -> np.ndarray:
    """Each finite point's sigma: its own standard error, the series noise, the floor, whichever is largest."""
    spread = float(values.max() - values.min())
    resolution = RESOLUTION * spread if spread > 0 else 1.0  # a constant series: any positive sigma will do
    given_floor = 0.0 if noise_floor is None or math.isnan(noise_floor) else noise_floor
    floor = max(noise_sigma(values), given_floor, resolution)
    # an unknown standard error (NaN; infinite too: no weight could be given) leaves the point at the floor
    own = np.zeros_like(values) if sigmas is None else np.nan_to_num(sigmas, nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(own, floor)


def penalty(n_points: int) -> float:
    """The cost of one more step, in chi-square units (calibrated: see the module's docstring)."""
    known_noise = PENALTY_BASE + PENALTY_PER_LOG_POINT * math.log(n_points)
    return known_noise * (1 + NOISE_ESTIMATE_POINTS / n_points) ** NOISE_ESTIMATE_POWER


def segment_bounds(values: np.ndarray, weights: np.ndarray) -> list[int]:
    """0, the first point of each new segment, len(values)."""
    pelt = rpt.Pelt(custom_cost=WeightedL2Cost(), min_size=MIN_SEGMENT, jump=1)
    return [0, *pelt.fit(np.column_stack([values, weights])).predict(pen=penalty(values.size))]


def step_between(before: slice, after: slice, values: np.ndarray, weights: np.ndarray, index: int) -> Step:
    mean_before = np.average(values[before], weights=weights[before])
    mean_after = np.average(values[after], weights=weights[after])
    standard_error = math.sqrt(1 / weights[before].sum() + 1 / weights[after].sum())
    return Step(index, float(mean_before), float(mean_after), float((mean_after - mean_before) / standard_error))


def detect_steps(values, sigmas=None, noise_floor=0.0) -> list[Step]:
    """The steps of a series in time order; ``sigmas``: per-point standard errors (None, NaN: unknown)."""
    values = as_floats(values)
    if sigmas is not None and len(sigmas) != len(values):
        raise ValueError(f"{len(sigmas)} sigmas for {len(values)} values")
    finite = np.isfinite(values)
    positions = np.flatnonzero(finite)  # a point of the fit -> its place in the sequence given
    if positions.size < MIN_POINTS:
        return []
    kept = values[finite]
    weights = 1 / point_sigmas(kept, None if sigmas is None else as_floats(sigmas)[finite], noise_floor) ** 2
    bounds = segment_bounds(kept, weights)
    return [step_between(slice(start, middle), slice(middle, end), kept, weights, int(positions[middle]))
            for start, middle, end in zip(bounds, bounds[1:], bounds[2:])]


def simulate_false_alarm_rate(n_points: int, n_series: int = 2000, seed: int = 0) -> float:
    """The fraction of Gaussian noise-only series of ``n_points`` in which ``detect_steps`` finds a step."""
    rng = np.random.default_rng(seed)
    return sum(bool(detect_steps(rng.normal(size=n_points))) for _ in range(n_series)) / n_series


def simulate_detection_rate(at: int, n_points: int = 30, step_sds: float = 3.0, n_series: int = 2000,
                            seed: int = 0) -> float:
    """The fraction of Gaussian series with one step of ``step_sds`` noise SDs at point ``at`` in which
    ``detect_steps`` finds a step within one point of ``at``."""
    rng = np.random.default_rng(seed)
    level = np.where(np.arange(n_points) >= at, step_sds, 0.0)
    found = (detect_steps(level + rng.normal(size=n_points)) for _ in range(n_series))
    return sum(any(abs(step.index - at) <= 1 for step in steps) for steps in found) / n_series
