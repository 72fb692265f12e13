"""The discretized logistic mixture against an independent float64 computation: bin masses as plain
differences of logistic CDFs, probabilities that sum to one even for extreme parameters, and a sampler
whose frequencies match them."""
import pytest
import torch
from scipy import stats

from models import discretized_logistic as logistic


def reference_probabilities(weights, means, scales):
    """P(x = v) for v = 0..255 computed directly: sum_k pi_k (F_k(upper edge) - F_k(lower edge)), edge bins
    open-ended, with F the logistic CDF (scipy's, in float64)."""
    centres = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    upper = torch.where(torch.arange(256) == 255, torch.tensor(float("inf")), centres + 1 / 255)
    lower = torch.where(torch.arange(256) == 0, torch.tensor(float("-inf")), centres - 1 / 255)
    total = torch.zeros(256, dtype=torch.float64)
    for pi, mu, s in zip(weights, means, scales):
        cdf = lambda t: torch.from_numpy(stats.logistic.cdf(t.numpy(), loc=mu, scale=s))  # noqa: E731
        total += pi * (cdf(upper) - cdf(lower))
    return total


def test_probabilities_match_a_direct_computation_of_cdf_differences():
    torch.manual_seed(0)
    for _ in range(5):
        params = torch.randn(9, dtype=torch.float64)
        params[6:] -= 2.0  # log-scales around e^-2 (a few bins wide)
        weights = torch.softmax(params[:3], 0)
        scales = torch.exp(params[6:].clamp(min=logistic.MIN_LOG_SCALE))
        expected = reference_probabilities(weights.tolist(), params[3:6].tolist(), scales.tolist())
        got = logistic.probabilities(params)
        assert torch.allclose(got, expected, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -7.0), (-1.0, -7.0), (1.0, -7.0), (3.0, -1.0), (-5.0, 2.0),
                                            (0.5, 4.0), (0.123, -5.5)])
def test_probabilities_sum_to_one_and_stay_finite_for_extreme_components(mean, log_scale):
    params = torch.tensor([0.0, mean, log_scale], dtype=torch.float64)
    probs = logistic.probabilities(params)
    assert torch.isfinite(torch.log(probs[probs > 0])).all()
    assert abs(probs.sum().item() - 1.0) < 1e-12
    log_p = logistic.log_prob(torch.arange(256.0, dtype=torch.float64), params.expand(256, 3))
    assert torch.isfinite(log_p).all()  # no log 0, even far in a tail


def test_sampler_frequencies_match_the_probabilities():
    torch.manual_seed(1)
    params = torch.tensor([0.2, -0.4, 0.0, -0.5, 0.3, 0.95, -2.5, -3.0, -6.0])
    n = 100000
    values = logistic.sample(params.expand(n, 9), torch.rand(n), torch.rand(n))
    assert torch.equal(values, values.round()) and values.min() >= 0 and values.max() <= 255
    observed = torch.bincount(values.long(), minlength=256).double()
    expected = logistic.probabilities(params.double()) * n
    keep = expected > 5
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    rest = observed[~keep].sum().item(), expected[~keep].sum().item()
    chi2 += (rest[0] - rest[1]) ** 2 / max(rest[1], 1e-9)
    assert chi2 < stats.chi2.ppf(0.999, int(keep.sum())), chi2
