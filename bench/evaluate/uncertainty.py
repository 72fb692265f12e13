"""How sure a sample-quality number is: FID, KID, precision and recall recomputed from stored features
(numpy/scipy, independent of torch-fidelity), density and coverage, FID extrapolated to infinitely many
samples, and bootstrap 95% intervals.

- ``density_coverage`` (Naeem, Oh, Uh, Choi & Yoo 2020, "Reliable Fidelity and Diversity Metrics for
  Generative Models"): balls of each real point's k-NN radius (k = 5, the paper's choice). Density is the
  mean number of real balls a sample falls in, divided by k (expected 1 when samples and real images come
  from one distribution; above 1 when samples crowd the dense regions); coverage is the fraction of real
  balls holding at least one sample. Unlike precision and recall, no ball is built around a sample, so
  one outlying sample cannot inflate them. Strict ``<`` as the authors' ``prdc`` package. Written here
  rather than through ``prdc``: the bootstrap needs them for point multiplicities (a resampled set's copies
  are not each other's neighbours), which it does not take; tests check both against a brute-force count.

- ``fid_inf`` (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find
  them"): FID is biased upwards at finite N, and the bias is close to k/N. FID is computed on random
  subsets at several sizes N, FID_N = FID_inf + k/N is fitted by least squares in 1/N, and the intercept
  is reported. Our reference set is small (the test split), so it carries its own 1/M bias: both sets
  are cut by the same fraction, which keeps the bias linear in 1/N.
- ``bootstrap``: each replicate resamples the samples' features *and* the reference features with
  replacement and recomputes the metric. The interval is the bootstrap's 2.5-97.5 percentile spread
  re-centred on the reported figure (the replicates' mean moved onto it): a confidence interval for
  the figure's expected value at this sample count (the mean over reruns with fresh samples and fresh
  reference images). It is not a prediction interval for one rerun's figure, which carries its own
  sampling noise besides ours and falls outside it more often than 5% of the time; nor is it an
  interval for the infinite-sample value (FID's bias is k/N; see ``fid_inf``).
  Duplicated points are handled as the same point
  where a metric compares points with each other: KID's unbiased kernel sums skip pairs of copies
  (like its diagonal), and a k-NN radius (precision/recall) skips the point's own copies but counts
  other points with their multiplicity.

The one trap: a resampled set holds ~37% duplicates; a statistic that treats two copies as two distinct
neighbours at distance 0 (a k-NN radius, a kernel's off-diagonal) is biased by the bootstrap itself.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

BOOTSTRAP_REPLICATES = 100
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_MAX_POINTS = 2000  # larger sets are bootstrapped on a random subset of this size (a wider interval)
KID_SUBSET_SIZE = 1000
FID_INF_SIZES = 8  # subset sizes from n/5 to n, evenly spaced in 1/N
FID_INF_DRAWS = 3  # random subsets per size, averaged
DENSITY_NEIGHBOURS = 5  # k of density and coverage (Naeem et al. 2020's recommendation)


# --- the metrics, from features --------------------------------------------------------------------
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_from_stats(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), with scipy's matrix square root."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead ReLU units make covariances singular; sqrtm copes
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (rows are points)."""
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def frechet_distance_fast(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance through symmetric eigen-solvers, several times faster than sqrtm (bootstrap
    replicates): tr (C1 C2)^(1/2) = sum of sqrt(eigenvalues of C1^(1/2) C2 C1^(1/2))."""
    (mu1, c1), (mu2, c2) = gaussian_stats(a), gaussian_stats(b)
    w, v = np.linalg.eigh(c1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root @ c2 @ root), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean)


def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel (Binkowski et al. 2018): (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_weighted(kxx, kyy, kxy, cx=None, cy=None) -> float:
    """Unbiased MMD^2 of sets given as kernel matrices plus point counts (bootstrap multiplicities).

    Pairs of copies of one point are left out like the diagonal, so counts of ones give the usual
    unbiased estimator (torch-fidelity's ``mmd2``)."""
    cx = np.ones(len(kxx)) if cx is None else cx
    cy = np.ones(len(kyy)) if cy is None else cy
    n, m = cx.sum(), cy.sum()

    def within(k, c, total):
        return (c @ k @ c - (c * c) @ np.diagonal(k)) / (total * total - (c * c).sum())

    return float(within(kxx, cx, n) + within(kyy, cy, m) - 2.0 * (cx @ kxy @ cy) / (n * m))


def kid(a: np.ndarray, b: np.ndarray, subset_size: int = KID_SUBSET_SIZE, subsets: int = 100,
        seed: int = 2020) -> float:
    """KID as torch-fidelity computes it: the mean unbiased MMD^2 over random subsets (same RNG draws)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), subset_size, replace=False)]
        y = b[rng.choice(len(b), subset_size, replace=False)]
        values.append(mmd2_weighted(poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y)))
    return float(np.mean(values))


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


class NeighbourRadii:
    """k-th nearest-neighbour distances within one set, for any multiplicities of its points.

    The distances are sorted once; a replicate's radius of point i is the distance at which the counts of
    the *other* points, accumulated in order of distance, reach k."""

    def __init__(self, distances: np.ndarray, k: int):
        d = distances.copy()
        np.fill_diagonal(d, np.inf)  # a point is not its own neighbour (nor are its copies)
        self.order = np.argsort(d, axis=1, kind="stable")
        self.sorted = np.take_along_axis(d, self.order, axis=1)
        self.k = k

    def radii(self, counts: np.ndarray) -> np.ndarray:
        for width in (min(8 * self.k + 8, self.order.shape[1]), self.order.shape[1]):  # nearest few suffice
            reached = np.cumsum(counts[self.order[:, :width]], axis=1) >= self.k
            if reached[:, -1].all() or width == self.order.shape[1]:
                return self.sorted[np.arange(len(self.sorted)), reached.argmax(1)]


def precision_recall(fake: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with torch-fidelity's conventions: a point
    lies in a set's manifold if it is within (<=) the k-NN radius of some point of that set."""
    return PrecisionRecall(fake, real, k)()


class PrecisionRecall:
    """Distances computed once; precision and recall for any point counts (bootstrap replicates)."""

    def __init__(self, fake, real, k: int = 3):
        self.fake_radii = NeighbourRadii(pairwise_distances(fake, fake), k)
        self.real_radii = NeighbourRadii(pairwise_distances(real, real), k)
        self.cross = pairwise_distances(fake, real)  # fake x real

    def __call__(self, cf=None, cr=None) -> tuple[float, float]:
        cf = np.ones(len(self.cross)) if cf is None else cf
        cr = np.ones(self.cross.shape[1]) if cr is None else cr
        r_real = np.where(cr > 0, self.real_radii.radii(cr), -np.inf)  # absent points have no ball
        r_fake = np.where(cf > 0, self.fake_radii.radii(cf), -np.inf)
        inside_real = (self.cross <= r_real[None, :]).any(1)
        inside_fake = (self.cross <= r_fake[:, None]).any(0)
        return float(cf @ inside_real / cf.sum()), float(cr @ inside_fake / cr.sum())


class DensityCoverage:
    """Distances computed once; density and coverage for any point counts (bootstrap replicates)."""

    def __init__(self, fake, real, k: int = DENSITY_NEIGHBOURS):
        self.real_radii = NeighbourRadii(pairwise_distances(real, real), k)
        self.cross = pairwise_distances(fake, real)  # fake x real
        self.k = k

    def __call__(self, cf=None, cr=None) -> tuple[float, float]:
        cf = np.ones(len(self.cross)) if cf is None else cf
        cr = np.ones(self.cross.shape[1]) if cr is None else cr
        radii = np.where(cr > 0, self.real_radii.radii(cr), -np.inf)  # absent real points have no ball
        inside = self.cross < radii[None, :]  # sample i in real j's ball
        density = float(cf @ (inside.astype(np.float64) @ cr) / (self.k * cf.sum()))
        covered = (inside & (cf > 0)[:, None]).any(0)
        return density, float(cr @ covered / cr.sum())


def density_coverage(fake: np.ndarray, real: np.ndarray, k: int = DENSITY_NEIGHBOURS) -> tuple[float, float]:
    """Density and coverage of samples ``fake`` against ``real`` (rows are feature vectors)."""
    return DensityCoverage(fake, real, k)()


# --- per class ------------------------------------------------------------------------------------
def intra_fid(samples: np.ndarray, sample_labels, reference: np.ndarray, reference_labels) -> tuple[float, dict]:
    """Intra-class FID of a conditional model (as StudioGAN reports it): the mean over classes of the FID
    between the samples drawn for class c and the reference images of class c. Returns (the mean,
    {class: FID}); a class with fewer than two samples or reference images is left out of both."""
    sample_labels, reference_labels = np.asarray(sample_labels), np.asarray(reference_labels)
    per_class = {}
    for c in np.unique(reference_labels):
        a, b = samples[sample_labels == c], reference[reference_labels == c]
        if len(a) >= 2 and len(b) >= 2:
            per_class[int(c)] = frechet_distance(a, b)
    if not per_class:
        raise ValueError("intra-class FID needs at least two samples and two reference images of some class")
    return float(np.mean(list(per_class.values()))), per_class


# --- FID at infinitely many samples ----------------------------------------------------------------
def fid_inf(samples: np.ndarray, reference: np.ndarray, sizes: int = FID_INF_SIZES, draws: int = FID_INF_DRAWS,
            seed: int = 0) -> tuple[float, dict]:
    """Intercept of the least-squares line FID_N = FID_inf + k / N over subset sizes N (Chong & Forsyth
    2020); returns (FID_inf, {"sizes", "fids", "slope"})."""
    n = len(samples)
    if n < 20:
        raise ValueError(f"FID_inf needs at least 20 samples, got {n}")
    inv = np.linspace(1.0 / n, 5.0 / n, sizes)  # evenly spaced in 1/N, from N = n down to n/5
    ns = np.unique(np.round(1.0 / inv).astype(int))
    m = len(reference)
    rng = np.random.default_rng(seed)
    fids = []
    for size in ns:
        ref_size = max(2, int(round(size * m / n)))
        reps = 1 if size == n else draws  # the whole set has one "subset"
        fids.append(np.mean([frechet_distance(samples[rng.choice(n, size, replace=False)],
                                              reference[rng.choice(m, ref_size, replace=False)])
                             for _ in range(reps)]))
    slope, intercept = np.polyfit(1.0 / ns, fids, 1)
    return float(intercept), {"sizes": ns.tolist(), "fids": [float(f) for f in fids], "slope": float(slope)}


# --- bootstrap -------------------------------------------------------------------------------------
BOUNDS = {"fid": (0.0, np.inf), "kid": (-np.inf, np.inf), "precision": (0.0, 1.0), "recall": (0.0, 1.0),
          "density": (0.0, np.inf), "coverage": (0.0, 1.0)}


def centred_interval(estimate: float, replicates, level: float = BOOTSTRAP_LEVEL,
                     bounds=(-np.inf, np.inf)) -> tuple[float, float]:
    """The replicates' percentile interval moved so that their mean sits on ``estimate``: resampling with
    replacement shifts FID (fewer distinct points, more bias) and the k-NN metrics; the shift is not
    the figure's uncertainty."""
    values = np.asarray(replicates, dtype=np.float64)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail]) - values.mean() + estimate
    return float(np.clip(low, *bounds)), float(np.clip(high, *bounds))


def _capped(features: np.ndarray, cap: int, rng) -> np.ndarray:
    return features if len(features) <= cap else features[rng.choice(len(features), cap, replace=False)]


def bootstrap_intervals(samples: np.ndarray, reference: np.ndarray, estimates: dict | None = None, *, k: int = 3,
                        replicates: int = BOOTSTRAP_REPLICATES, level: float = BOOTSTRAP_LEVEL,
                        max_points: int = BOOTSTRAP_MAX_POINTS, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile intervals of FID, KID, precision, recall, density and coverage, resampling both feature sets.

    Sets larger than ``max_points`` are first cut to a random subset of that size (cost: the k-NN and
    kernel matrices are squared in the set size); the interval then describes the statistic at that size,
    wider than at the full size. KID is bootstrapped as one unbiased MMD^2 over the (capped) sets.
    ``estimates``: the reported figures the intervals are centred on (default: the figures of the
    capped sets, computed here)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(_capped(np.asarray(samples), max_points, rng), np.float64)
    b = np.asarray(_capped(np.asarray(reference), max_points, rng), np.float64)
    n, m = len(a), len(b)
    kxx, kyy, kxy = poly_kernel(a, a), poly_kernel(b, b), poly_kernel(a, b)
    prc = PrecisionRecall(a, b, k)
    dc = DensityCoverage(a, b)
    out = {"fid": [], "kid": [], "precision": [], "recall": [], "density": [], "coverage": []}
    for _ in range(replicates):
        ia, ib = rng.integers(0, n, n), rng.integers(0, m, m)
        ca, cb = np.bincount(ia, minlength=n).astype(float), np.bincount(ib, minlength=m).astype(float)
        out["fid"].append(frechet_distance_fast(a[ia], b[ib]))
        out["kid"].append(mmd2_weighted(kxx, kyy, kxy, ca, cb))
        p, r = prc(ca, cb)
        out["precision"].append(p)
        out["recall"].append(r)
        density, coverage = dc(ca, cb)
        out["density"].append(density)
        out["coverage"].append(coverage)
    if estimates is None:
        p, r = prc()
        density, coverage = dc()
        estimates = {"fid": frechet_distance(a, b), "kid": mmd2_weighted(kxx, kyy, kxy), "precision": p, "recall": r,
                     "density": density, "coverage": coverage}
    return {metric: centred_interval(estimates[metric], values, level, BOUNDS[metric])
            for metric, values in out.items() if metric in estimates}
