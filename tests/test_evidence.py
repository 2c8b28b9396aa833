"""Statistics of evidence against published numbers and Monte Carlo: the deflated Sharpe ratio, the
probability of backtest overfitting (CSCV) and the paired stationary-bootstrap Sharpe test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sentio_core.evidence import (
    bootstrap_equity_band,
    deflated_sharpe,
    deflated_sharpe_from_moments,
    expected_max_sharpe,
    paired_sharpe_test,
    pbo,
    pbo_reference,
    psr_from_moments,
    sharpe_moments,
)
from sentio_core.metrics import MetricsError, probabilistic_sharpe


def test_deflated_sharpe_reproduces_the_papers_worked_example():
    """Bailey and Lopez de Prado (2014), section 4: 100 trials with annualised Sharpe variance 0.5,
    a selected strategy of annualised Sharpe 2.5 over 1,250 daily bars, skewness -3, kurtosis 10:
    SR0 = 0.1132 a day and DSR = 0.9004."""
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    assert expected_max_sharpe(100, 0.5) == pytest.approx(0.1132 * math.sqrt(250), abs=1e-3)
    dsr = deflated_sharpe_from_moments(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, 0.5 / 250)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_one_trial_is_the_probabilistic_sharpe_against_zero():
    rng = np.random.default_rng(0)
    r = rng.normal(0.001, 0.01, 500)
    assert expected_max_sharpe(1, 0.3) == 0.0
    assert deflated_sharpe(r, 1, 0.01) == pytest.approx(probabilistic_sharpe(r, 0.0), rel=1e-12)
    sr, g3, g4, t = sharpe_moments(r)
    assert psr_from_moments(sr, t, g3, g4, 0.02) == pytest.approx(probabilistic_sharpe(r, 0.02), rel=1e-12)


def test_more_trials_deflate_more():
    r = np.random.default_rng(1).normal(0.001, 0.01, 750)
    values = [deflated_sharpe(r, n, 0.002) for n in (1, 5, 50, 500)]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


def test_deflated_sharpe_holds_skill_free_selection_near_its_level():
    """Monte Carlo: the best of 20 skill-free trials (Sharpe variance measured across them) passes
    DSR >= 0.95 in about 5 % of experiments; the undeflated PSR against 0 passes most of the time."""
    rng = np.random.default_rng(7)
    passed_dsr = passed_psr = 0
    reps, n_trials, t = 400, 20, 500
    for _ in range(reps):
        trials = rng.normal(0.0, 0.01, (t, n_trials))
        sharpes = trials.mean(0) / trials.std(0, ddof=1)
        best = trials[:, int(np.argmax(sharpes))]
        passed_dsr += deflated_sharpe(best, n_trials, float(np.var(sharpes, ddof=1))) >= 0.95
        passed_psr += probabilistic_sharpe(best, 0.0) >= 0.95
    assert passed_dsr / reps <= 0.08
    assert passed_psr / reps >= 0.4


def test_pbo_of_pure_noise_is_near_one_half():
    rng = np.random.default_rng(3)
    values = [pbo(rng.normal(0, 0.01, (600, 12)), n_blocks=10).pbo for _ in range(6)]
    assert 0.3 <= float(np.mean(values)) <= 0.7
    result = pbo(rng.normal(0, 0.01, (600, 12)), n_blocks=10)
    assert result.n_splits == math.comb(10, 5) and result.logits.shape == (252,)
    assert abs(float(np.median(result.logits))) < 1.0  # centred near 0: no information in-sample


def test_pbo_with_one_real_edge_among_noise_is_near_zero():
    rng = np.random.default_rng(4)
    m = rng.normal(0, 0.01, (600, 12))
    m[:, 5] += 0.004  # a per-bar Sharpe of 0.4
    result = pbo(m, n_blocks=10)
    assert result.pbo < 0.05
    assert float(np.median(result.logits)) > 1.5


def test_pbo_by_hand_on_a_tiny_matrix():
    """Two configurations, 4 blocks of 2 rows: configuration 1 is better in blocks 0-1, worse in
    2-3. Each split's in-sample winner and its out-of-sample rank, by hand."""
    m = np.array([[0.0, 0.02], [0.01, 0.03], [0.0, 0.02], [0.01, 0.03],  # blocks 0, 1: config 1 better
                  [0.02, 0.0], [0.03, 0.01], [0.02, 0.0], [0.03, 0.01]], dtype=float)  # blocks 2, 3: config 0 better
    # the six halves: {0,1} -> winner 1, out {2,3} ranks it worst; {2,3} -> winner 0, out {0,1} worst;
    # the mixed halves tie the Sharpe ratios (both columns alternate the same two values), argmax picks 0,
    # and the out-of-sample halves tie too: rank 1.5 of 2, w = 0.5, logit 0 (counted as overfit)
    result = pbo(m, n_blocks=4)
    assert result.n_splits == 6
    assert result.pbo == 1.0
    worst = math.log((1 / 3) / (2 / 3))
    assert sorted(np.round(result.logits, 12)) == sorted(np.round([worst, worst, 0, 0, 0, 0], 12))


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((100, 1)), "N >= 2"),
    (np.zeros(100), "N >= 2"),
])
def test_pbo_rejects_bad_input(bad, needle):
    with pytest.raises(MetricsError, match=needle):
        pbo(bad)


def test_pbo_needs_an_even_number_of_blocks_and_enough_rows():
    with pytest.raises(MetricsError, match="even"):
        pbo(np.zeros((100, 3)), n_blocks=5)
    with pytest.raises(MetricsError, match="too few"):
        pbo(np.zeros((10, 3)), n_blocks=8)


def test_paired_test_finds_a_real_difference():
    rng = np.random.default_rng(5)
    other = rng.normal(0, 0.01, 750)
    candidate = other * 0.5 + rng.normal(0.0015, 0.005, 750)
    test = paired_sharpe_test(candidate, other, seed=0)
    assert test.difference > 0 and test.p_value < 0.01 and test.low > 0
    same = paired_sharpe_test(other, other, seed=0)
    assert same.difference == 0.0 and same.low == 0.0 == same.high


def test_paired_test_keeps_its_size_without_skill():
    """Two skill-free strategies: 'candidate better at 5 %' is declared in about 5 % of experiments."""
    rng = np.random.default_rng(11)
    rejections, reps = 0, 200
    for k in range(reps):
        a, b = rng.normal(0, 0.01, (2, 250))
        rejections += paired_sharpe_test(a, b, n=500, seed=k).p_value <= 0.05
    assert 0.01 <= rejections / reps <= 0.10


def test_paired_test_is_reproducible_and_checks_its_input():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 0.01, (2, 300))
    assert paired_sharpe_test(a, b, seed=3) == paired_sharpe_test(a, b, seed=3)
    with pytest.raises(MetricsError, match="same bars"):
        paired_sharpe_test(a, b[:-1], seed=0)
    with pytest.raises(MetricsError, match="block"):
        paired_sharpe_test(a, b, block=0.5, seed=0)


@pytest.mark.parametrize("seed", range(4))
def test_the_vectorised_pbo_equals_the_split_by_split_reference(seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(0.0, 0.01, size=(203, 5)) + rng.normal(0.0, 0.002, size=5)  # uneven blocks, drifting columns
    m[:, 3] = 0.0  # a flat configuration: Sharpe 0 in every half
    for blocks in (4, 8, 10):
        fast, slow = pbo(m, n_blocks=blocks), pbo_reference(m, n_blocks=blocks)
        assert fast.pbo == slow.pbo and fast.n_splits == slow.n_splits == math.comb(blocks, blocks // 2)
        np.testing.assert_allclose(fast.logits, slow.logits, rtol=0, atol=1e-12)


def test_the_bootstrap_equity_band_holds_the_path_and_widens_with_time():
    r = np.random.default_rng(0).normal(0.0005, 0.01, 500)
    lo, hi = bootstrap_equity_band(r, n=400, alpha=0.1, seed=1)
    growth = np.cumprod(1 + r)
    assert lo.shape == hi.shape == (500,) and np.all(lo <= hi)
    inside = np.mean((lo <= growth) & (growth <= hi))
    assert inside > 0.8  # the realised path is one of the paths the band describes
    assert hi[-1] - lo[-1] > 5 * (hi[10] - lo[10])  # uncertainty compounds
    again = bootstrap_equity_band(r, n=400, alpha=0.1, seed=1)
    np.testing.assert_array_equal(lo, again[0])
    with pytest.raises(MetricsError, match="alpha"):
        bootstrap_equity_band(r, alpha=1.5, seed=0)


def test_the_vectorised_sharpe_interval_is_the_bootstrap_ci_of_the_sharpe():
    from sentio_core.evidence import sharpe_interval
    from sentio_core.metrics import block_bootstrap_ci

    r = np.random.default_rng(2).normal(0.0005, 0.01, 300)
    fast = sharpe_interval(r, n=500, alpha=0.1, seed=9)
    slow = block_bootstrap_ci(r, lambda x: sharpe_moments(x)[0], block=300 ** (1 / 3), n=500, alpha=0.1, seed=9)
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
