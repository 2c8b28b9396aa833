"""Statistics of evidence: what a Sharpe ratio is worth after the trials that produced it.

- :func:`expected_max_sharpe` and :func:`deflated_sharpe` (Bailey and Lopez de Prado, 2014, "The
  Deflated Sharpe Ratio"): the probabilistic Sharpe ratio of the selected strategy against the
  Sharpe ratio the best of ``N`` skill-free trials would show by chance,
  ``SR0 = sqrt(V[SR]) ((1 - g) Z^-1[1 - 1/N] + g Z^-1[1 - 1/(N e)])``, g the Euler-Mascheroni
  constant, ``V[SR]`` the variance of the trials' Sharpe ratios. Per-bar units throughout.
- :func:`pbo` (Bailey, Borwein, Lopez de Prado and Zhu, 2015, "The Probability of Backtest
  Overfitting"): combinatorially symmetric cross-validation over a (T, N) matrix of N
  configurations' returns: for every split of S row blocks into halves, the configuration best
  in-sample is ranked out of sample; PBO is the share of splits where it lands at or below the
  median (logit <= 0).
- :func:`paired_sharpe_test`: a stationary bootstrap (Politis and Romano, 1994) of two strategies'
  returns on the same bars, resampled together, for the difference of their Sharpe ratios: the
  one-sided p-value of "no better" and a percentile interval.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from sentio_core.metrics import MetricsError, _check_returns, _stationary_indices

EULER_GAMMA = 0.5772156649015329


def expected_max_sharpe(n_trials: int, var_sharpe: float) -> float:
    """The expected largest Sharpe ratio of ``n_trials`` independent skill-free trials whose Sharpe
    ratios have variance ``var_sharpe`` (same units as the result); 0 for one trial."""
    if n_trials < 1:
        raise MetricsError(f"n_trials must be at least 1, got {n_trials!r}")
    if var_sharpe < 0:
        raise MetricsError(f"var_sharpe must be >= 0, got {var_sharpe!r}")
    if n_trials == 1:
        return 0.0
    z = stats.norm.ppf
    return float(math.sqrt(var_sharpe) * ((1 - EULER_GAMMA) * z(1 - 1 / n_trials)
                                          + EULER_GAMMA * z(1 - 1 / (n_trials * math.e))))


def sharpe_moments(returns) -> tuple[float, float, float, int]:
    """Per-bar Sharpe (``mean / std(ddof=1)``), skewness, non-excess kurtosis and length of bar returns;
    a flat path is Sharpe 0 with normal shape."""
    r = _check_returns(returns)
    if r.size < 2:
        raise MetricsError(f"returns needs at least 2 bars, got {r.size}")
    sd = r.std(ddof=1)
    if sd <= 1e-15:
        return 0.0, 0.0, 3.0, int(r.size)
    return float(r.mean() / sd), float(stats.skew(r)), float(stats.kurtosis(r, fisher=False)), int(r.size)


def psr_from_moments(sharpe: float, n_obs: int, skew: float, kurtosis: float, benchmark: float) -> float:
    """``Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))``: P(true Sharpe > SR*), per bar."""
    var = max(1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2, 1e-12)
    return float(stats.norm.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var)))


def deflated_sharpe_from_moments(sharpe: float, n_obs: int, skew: float, kurtosis: float, n_trials: int,
                                 var_sharpe: float) -> float:
    """The deflated Sharpe ratio of a strategy given by its per-bar moments (see the module)."""
    return psr_from_moments(sharpe, n_obs, skew, kurtosis, expected_max_sharpe(n_trials, var_sharpe))


def deflated_sharpe(returns, n_trials: int, var_sharpe: float) -> float:
    """The deflated Sharpe ratio of bar ``returns`` selected among ``n_trials`` trials whose per-bar
    Sharpe ratios have variance ``var_sharpe``: P(its true Sharpe beats the best of the trials by chance)."""
    sharpe, skew, kurt, t = sharpe_moments(returns)
    return deflated_sharpe_from_moments(sharpe, t, skew, kurt, n_trials, var_sharpe)


@dataclass(frozen=True)
class PBOResult:
    """CSCV's probability of backtest overfitting and what it was computed from."""

    pbo: float
    logits: np.ndarray  # (C,) logit of the in-sample winner's out-of-sample relative rank, per split
    n_splits: int
    n_blocks: int
    n_configurations: int


def _block_sharpe(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0, ddof=1)
    out = np.zeros(x.shape[1])
    ok = sd > 1e-15
    out[ok] = x.mean(axis=0)[ok] / sd[ok]
    return out


def _check_pbo(returns: np.ndarray, n_blocks: int) -> np.ndarray:
    m = np.asarray(returns, dtype=float)
    if m.ndim != 2 or m.shape[1] < 2:
        raise MetricsError(f"returns must be (T, N) with N >= 2 configurations, got shape {m.shape}")
    if n_blocks < 2 or n_blocks % 2:
        raise MetricsError(f"n_blocks must be even and >= 2, got {n_blocks!r}")
    if m.shape[0] < 2 * n_blocks:
        raise MetricsError(f"{m.shape[0]} rows are too few for {n_blocks} blocks of at least 2 rows")
    if not np.isfinite(m).all():
        raise MetricsError("returns contain NaN or infinite values")
    return m


def _result(logits: np.ndarray, n_blocks: int, n: int) -> PBOResult:
    return PBOResult(pbo=float(np.mean(logits <= 0)), logits=logits, n_splits=len(logits), n_blocks=n_blocks,
                     n_configurations=n)


def pbo(returns: np.ndarray, n_blocks: int = 16) -> PBOResult:
    """Probability of backtest overfitting by CSCV.

    :param returns: (T, N) bar returns of N configurations on the same bars (N >= 2).
    :param n_blocks: S, even: the rows are cut into S contiguous blocks and every choice of S/2
        blocks is one in-sample half (its complement the out-of-sample half): C(S, S/2) splits.
    :returns: PBO = share of splits whose in-sample best (by Sharpe) ranks at or below the
        out-of-sample median, and the logits ``log(w / (1 - w))`` of its relative rank ``w`` (rank
        / (N + 1), 1 the best), per split.

    Every split at once: each half's Sharpe ratios come from the blocks' counts, sums and sums of
    squares (a (C, S) membership matrix times (S, N) block moments); :func:`pbo_reference` is the
    split-by-split loop it is held equal to.
    """
    m = _check_pbo(returns, n_blocks)
    n = m.shape[1]
    blocks = np.array_split(np.arange(m.shape[0]), n_blocks)
    count = np.array([len(b) for b in blocks], dtype=float)
    total = np.stack([m[b].sum(axis=0) for b in blocks])  # (S, N)
    squares = np.stack([(m[b] ** 2).sum(axis=0) for b in blocks])
    member = np.zeros((math.comb(n_blocks, n_blocks // 2), n_blocks))
    for row, chosen in enumerate(itertools.combinations(range(n_blocks), n_blocks // 2)):
        member[row, list(chosen)] = 1.0

    def sharpe(w: np.ndarray) -> np.ndarray:
        k, s1, s2 = (w @ count)[:, None], w @ total, w @ squares
        var = np.maximum(s2 - s1**2 / k, 0.0) / (k - 1)
        sd = np.sqrt(var)
        return np.where(sd > 1e-15, (s1 / k) / np.where(sd > 1e-15, sd, 1.0), 0.0)

    inside, outside = sharpe(member), sharpe(1.0 - member)
    best = np.argmax(inside, axis=1)
    rank = stats.rankdata(outside, axis=1)[np.arange(len(best)), best]  # 1 = worst .. N = best (ties averaged)
    w = rank / (n + 1)
    return _result(np.log(w / (1 - w)), n_blocks, n)


def pbo_reference(returns: np.ndarray, n_blocks: int = 16) -> PBOResult:
    """:func:`pbo` the slow, obvious way: one split at a time, Sharpe ratios from the rows themselves."""
    m = _check_pbo(returns, n_blocks)
    blocks = np.array_split(np.arange(m.shape[0]), n_blocks)
    n = m.shape[1]
    logits = []
    for chosen in itertools.combinations(range(n_blocks), n_blocks // 2):
        inside = np.concatenate([blocks[b] for b in chosen])
        outside = np.concatenate([blocks[b] for b in range(n_blocks) if b not in chosen])
        best = int(np.argmax(_block_sharpe(m[inside])))
        oos = _block_sharpe(m[outside])
        rank = stats.rankdata(oos)[best]
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    return _result(np.asarray(logits), n_blocks, n)


@dataclass(frozen=True)
class PairedTest:
    """A bootstrap comparison of a candidate's Sharpe ratio with another strategy's on the same bars."""

    difference: float  # candidate minus other, per-bar Sharpe
    p_value: float  # one-sided: P(difference <= 0) under the bootstrap's null-centred distribution
    low: float  # percentile interval of the difference
    high: float
    block: float  # mean block length of the stationary bootstrap, bars
    n: int  # resamples


def paired_sharpe_test(candidate, other, *, block: float | None = None, n: int = 2000, alpha: float = 0.05,
                       seed: int) -> PairedTest:
    """Is the candidate's Sharpe ratio higher than the other's on the same bars?

    Both return series are resampled with the same stationary-bootstrap indices (mean block
    length ``block``, default ``T ** (1/3)`` bars: the usual rate for a variance estimate, which
    keeps the short-range dependence of daily returns), so their dependence is kept. The p-value
    is the share of null-centred resampled differences (``d* - d``) at least the observed ``d``:
    small when the candidate is better. The interval is the ``1 - alpha`` percentile interval of ``d*``.
    """
    a, b = _check_returns(candidate), _check_returns(other)
    if a.shape != b.shape:
        raise MetricsError(f"the two return series must cover the same bars, got {a.size} and {b.size}")
    if a.size < 4:
        raise MetricsError(f"at least 4 bars are needed, got {a.size}")
    block = max(1.0, a.size ** (1 / 3)) if block is None else float(block)
    if block < 1:
        raise MetricsError(f"block must be a mean block length >= 1 bar, got {block!r}")
    idx = _stationary_indices(np.random.default_rng(seed), a.size, n, block)  # (n, T)
    d = float(_block_sharpe(a[:, None])[0] - _block_sharpe(b[:, None])[0])
    draws = _block_sharpe(a[idx].T) - _block_sharpe(b[idx].T)
    p = float((1 + np.sum(draws - d >= d)) / (n + 1))
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return PairedTest(difference=d, p_value=p, low=float(lo), high=float(hi), block=block, n=n)


def bootstrap_equity_band(returns, *, block: float | None = None, n: int = 1000, alpha: float = 0.1,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``alpha/2 .. 1 - alpha/2`` band of growth-of-1 curves of stationary-bootstrap resamples of
    ``returns`` (mean block ``block``, default ``T ** (1/3)`` bars): how differently the same bars,
    drawn again, could have compounded.

    :returns: (low, high), each (T,): the band after each bar.
    """
    r = _check_returns(returns)
    if not 0 < alpha < 1:
        raise MetricsError(f"alpha must be in (0, 1), got {alpha!r}")
    block = max(1.0, r.size ** (1 / 3)) if block is None else float(block)
    idx = _stationary_indices(np.random.default_rng(seed), r.size, n, block)
    paths = np.cumprod(1.0 + r[idx], axis=1)
    lo, hi = np.quantile(paths, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def sharpe_interval(returns, *, block: float | None = None, n: int = 2000, alpha: float = 0.05,
                    seed: int) -> tuple[float, float]:
    """The ``1 - alpha`` percentile interval of the per-bar Sharpe ratio under a stationary bootstrap
    (mean block ``block``, default ``T ** (1/3)`` bars): :func:`metrics.block_bootstrap_ci` with the
    Sharpe ratio computed for every resample at once."""
    r = _check_returns(returns)
    if not 0 < alpha < 1:
        raise MetricsError(f"alpha must be in (0, 1), got {alpha!r}")
    block = max(1.0, r.size ** (1 / 3)) if block is None else float(block)
    idx = _stationary_indices(np.random.default_rng(seed), r.size, n, block)
    lo, hi = np.quantile(_block_sharpe(r[idx].T), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
