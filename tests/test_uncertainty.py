"""bench.evaluate.uncertainty: the numpy/scipy metrics against torch-fidelity's, FID_inf against the closed-form
Frechet distance of two Gaussians, and the bootstrap interval's coverage in a simulation with known truth."""
import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from bench.evaluate import uncertainty


def relu_features(seed, n=600, d=32, shift=0.2):
    rng = np.random.default_rng(seed)
    a = np.maximum(rng.normal(size=(n, d)), 0).astype(np.float32)
    b = np.maximum(rng.normal(shift, 1.0, size=(n, d)), 0).astype(np.float32)
    return a, b


def test_fid_kid_precision_recall_equal_torch_fidelity():
    a, b = relu_features(0)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fid = fid_statistics_to_metric(fid_features_to_statistics(ta), fid_features_to_statistics(tb), False)
    assert uncertainty.frechet_distance(a, b) == pytest.approx(fid["frechet_inception_distance"], rel=1e-6)
    assert uncertainty.frechet_distance_fast(a, b) == pytest.approx(fid["frechet_inception_distance"], rel=1e-6)
    kid = kid_features_to_metric(ta, tb, kid_subsets=4, kid_subset_size=300, verbose=False, rng_seed=2020,
                                 kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1)
    assert uncertainty.kid(a, b, 300, 4, 2020) == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-4)
    prc = prc_features_to_metric(ta, tb, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=True,
                                 verbose=False)
    precision, recall = uncertainty.precision_recall(a, b, 3)
    assert precision == pytest.approx(prc["precision"], abs=1e-6)
    assert recall == pytest.approx(prc["recall"], abs=1e-6)
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95  # not a degenerate case


def test_counts_of_ones_are_the_plain_metrics_and_copies_are_not_neighbours():
    a, b = relu_features(1, n=200, d=8)
    prc = uncertainty.PrecisionRecall(a, b, 3)
    assert prc(np.ones(200), np.ones(200)) == prc()
    # The radii's shortcut (the nearest few neighbours) against the full cumulative count.
    counts = np.random.default_rng(2).multinomial(200, np.full(200, 1 / 200)).astype(float)
    radii = prc.real_radii.radii(counts)
    full = np.cumsum(counts[prc.real_radii.order], axis=1) >= 3
    assert np.array_equal(radii, prc.real_radii.sorted[np.arange(200), full.argmax(1)])
    # Two copies of every point: a point's own copy is no neighbour, and every other point counts twice,
    # so the 3rd neighbour counted with multiplicity is the 2nd distinct one.
    distances = uncertainty.pairwise_distances(b, b)
    doubled = uncertainty.NeighbourRadii(distances, 3).radii(np.full(200, 2.0))
    assert np.array_equal(doubled, uncertainty.NeighbourRadii(distances, 2).radii(np.ones(200)))
    assert np.array_equal(doubled, np.sort(distances + np.diag(np.full(200, np.inf)), axis=1)[:, 1])

def gaussian_fid(mu1, c1, mu2, c2):
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def test_fid_inf_is_closer_to_the_true_distance_than_fid_at_small_n():
    rng = np.random.default_rng(3)
    d = 16
    mu1, mu2 = np.zeros(d), np.full(d, 0.3)
    c1, c2 = np.eye(d), np.diag(np.linspace(0.5, 2.0, d))
    truth = gaussian_fid(mu1, c1, mu2, c2)
    errors_inf, errors_small = [], []
    for _ in range(5):
        a = rng.multivariate_normal(mu1, c1, 1000)
        b = rng.multivariate_normal(mu2, c2, 1000)
        value, fit = uncertainty.fid_inf(a, b, seed=int(rng.integers(1 << 30)))
        errors_inf.append(abs(value - truth))
        errors_small.append(abs(fit["fids"][0] - truth))  # the smallest N of the fit
        assert fit["sizes"][0] == 200 and fit["sizes"][-1] == 1000
    assert np.mean(errors_inf) < 0.5 * np.mean(errors_small)


def test_bootstrap_interval_covers_the_expected_figure():
    """Known truth: E[FID_N], E[KID] and E[precision] at this N, from independent draws; each of 50 simulated
    runs' intervals should cover it about 95% of the time."""
    rng = np.random.default_rng(4)
    d, n = 4, 150
    mu2 = np.full(d, 0.25)

    def draw():
        return rng.normal(size=(n, d)), rng.normal(mu2, 1.0, size=(n, d))

    truth_fid = np.mean([uncertainty.frechet_distance(*draw()) for _ in range(400)])
    truth_kid = np.mean([uncertainty.kid(*draw(), subset_size=n, subsets=1) for _ in range(200)])
    truth_precision = np.mean([uncertainty.precision_recall(*draw())[0] for _ in range(200)])
    covered = {"fid": 0, "kid": 0, "precision": 0}
    runs = 50
    for i in range(runs):
        a, b = draw()
        intervals = uncertainty.bootstrap_intervals(a, b, replicates=100, seed=i)
        covered["fid"] += intervals["fid"][0] <= truth_fid <= intervals["fid"][1]
        covered["kid"] += intervals["kid"][0] <= truth_kid <= intervals["kid"][1]
        covered["precision"] += intervals["precision"][0] <= truth_precision <= intervals["precision"][1]
    assert covered["fid"] / runs >= 0.8, covered
    assert covered["kid"] / runs >= 0.8, covered
    assert covered["precision"] / runs >= 0.8, covered


def test_an_uncentred_interval_would_miss_fid():
    """The re-centring matters: raw percentiles of resampled FIDs sit above the figure (duplicates add
    bias), which is why the interval is moved onto it."""
    a, b = relu_features(5, n=300, d=32)
    fid = uncertainty.frechet_distance(a, b)
    low, high = uncertainty.bootstrap_intervals(a, b, replicates=50)["fid"]
    assert low <= fid <= high


def _brute_force_density_coverage(fake, real, k):
    """Naeem et al. 2020's definitions, one point at a time in plain Python: each real point's radius is its
    k-th nearest other real point; density counts (sample, ball) pairs, coverage the balls with a sample."""
    dist = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    radii = [sorted(dist(y, other) for j2, other in enumerate(real) if j2 != j)[k - 1] for j, y in enumerate(real)]
    pairs = sum(dist(x, y) < r for x in fake for y, r in zip(real, radii))
    covered = sum(any(dist(x, y) < r for x in fake) for y, r in zip(real, radii))
    return pairs / (k * len(fake)), covered / len(real)


def test_density_and_coverage_equal_a_brute_force_count():
    rng = np.random.default_rng(5)
    fake, real = rng.normal(0.3, 1.0, (40, 3)), rng.normal(0.0, 1.0, (50, 3))
    expected = _brute_force_density_coverage(fake, real, 5)
    assert uncertainty.density_coverage(fake, real, k=5) == pytest.approx(expected, abs=1e-12)
    assert expected[0] not in (0.0, 1.0) and 0.0 < expected[1] < 1.0  # a case that tests something


def test_density_and_coverage_with_counts_equal_the_metrics_of_the_repeated_sets():
    """What the bootstrap passes (multiplicities) means the same as the sets with those copies, except that a
    real point's copies are not its neighbours (as for precision/recall)."""
    rng = np.random.default_rng(6)
    fake, real = rng.normal(size=(30, 2)), rng.normal(size=(35, 2))
    cf, cr = rng.integers(0, 3, 30).astype(float), np.ones(35)
    repeated = np.repeat(fake, cf.astype(int), axis=0)
    assert uncertainty.DensityCoverage(fake, real, 5)(cf, cr) == pytest.approx(
        uncertainty.density_coverage(repeated, real, 5), abs=1e-12)


def test_density_and_coverage_are_near_one_for_one_distribution():
    """Two samples of one distribution: density's expectation is 1; coverage's is
    1 - prod_{i<k} (N - 1 - i) / (M + N - 1 - i) ~ 1 - 2^-k = 0.97 for N = M (Naeem et al. 2020)."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    density, coverage = uncertainty.density_coverage(a, b)
    assert density == pytest.approx(1.0, abs=0.08)
    assert coverage == pytest.approx(1 - 0.5 ** 5, abs=0.02)
    shifted_density, shifted_coverage = uncertainty.density_coverage(a + 1.5, b)  # another distribution
    assert shifted_density < 0.5 and shifted_coverage < 0.6
