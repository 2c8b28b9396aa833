"""Performance metrics of one backtest path: pure numpy, annualised by the real bar frequency.

Conventions, shared by every function here:

* ``equity`` has shape (T+1,): dollars at the start (index 0, the initial equity) and after the
  close of each of the T bars. It must be finite and strictly positive.
* Bar returns are ``r_t = equity[t] / equity[t-1] - 1``, shape (T,), as fractions.
* ``periods_per_year`` is bars per year, i.e. ``BarFrequency.periods_per_year`` from
  :mod:`sentio_core.data`: 252 for daily bars, 252 x bars per session for intraday bars. Annual
  figures scale a per-bar mean by ``periods_per_year`` and a per-bar standard deviation by its
  square root, so 5-minute bars are not mistaken for days.
* The risk-free rate is zero.
* No metric returns NaN or inf. Where a ratio is undefined (zero variance, no losing bar, no
  drawdown) it is 0.0; each function's docstring says when.

One function per metric, then :func:`performance`, which gathers them into the flat dict that the
backtest logs. :func:`block_bootstrap_ci` and :func:`probabilistic_sharpe` say how much of a
Sharpe ratio could be luck.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

#: Denominators at or below this are treated as zero (a ratio over them is undefined -> 0.0).
#: Bar-return dispersions this small are float rounding noise, not risk.
_EPS = 1e-12
#: Cap on annualised log growth: compounding a few strong intraday bars over a year overflows
#: a float; CAGR is capped at ``exp(100) - 1`` (about 2.7e43) so the output stays finite.
_MAX_LOG_GROWTH = 100.0

#: Keys of :func:`performance`, in order.
METRIC_KEYS: tuple[str, ...] = (
    "total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
    "max_drawdown_bars", "cvar_5", "turnover", "cost_drag", "cost_drag_ann", "exposure",
    "win_rate", "overrides", "n_bars", "n_trades",
)


class MetricsError(ValueError):
    """Input that no metric can be computed from; the message names the argument and the fix."""


# --------------------------------------------------------------------------- validation


def _check_equity(equity) -> np.ndarray:
    e = np.asarray(equity, dtype=float)
    if e.ndim != 1 or e.size < 2:
        raise MetricsError(f"equity must be 1-D with at least 2 points (start + one bar), got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        bad = np.flatnonzero(~np.isfinite(e))[:5].tolist()
        raise MetricsError(f"equity must be finite; bad values at indices {bad}")
    if np.any(e <= 0):
        bad = np.flatnonzero(e <= 0)[:5].tolist()
        raise MetricsError(f"equity must be strictly positive (dollars); non-positive at indices {bad}")
    return e


def _check_returns(returns, name: str = "returns") -> np.ndarray:
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1 or r.size < 1:
        raise MetricsError(f"{name} must be 1-D with at least 1 bar, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise MetricsError(f"{name} must be finite")
    return r


def _check_ppy(periods_per_year: float) -> float:
    ppy = float(periods_per_year)
    if not np.isfinite(ppy) or ppy <= 0:
        raise MetricsError(f"periods_per_year must be a positive number of bars per year, got {periods_per_year!r}")
    return ppy


def _check_per_bar(values, name: str, n_bars: int) -> np.ndarray:
    """An optional (T,) per-bar series; None means zeros."""
    if values is None:
        return np.zeros(n_bars)
    v = np.asarray(values, dtype=float)
    if v.shape != (n_bars,):
        raise MetricsError(f"{name} must have shape ({n_bars},) = one value per bar (len(equity) - 1), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise MetricsError(f"{name} must be finite")
    return v


def _ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is (numerically) zero."""
    return float(num / den) if den > _EPS else 0.0


# --------------------------------------------------------------------------- path metrics


def bar_returns(equity) -> np.ndarray:
    """Simple bar returns (fractions), shape (T,), from equity in dollars, shape (T+1,)."""
    e = _check_equity(equity)
    return e[1:] / e[:-1] - 1.0


def total_return(equity) -> float:
    """Growth over the whole path as a fraction: ``equity[-1] / equity[0] - 1``."""
    e = _check_equity(equity)
    return float(e[-1] / e[0] - 1.0)


def cagr(equity, periods_per_year: float) -> float:
    """Compound annual growth rate (fraction per year) over ``T / periods_per_year`` years.

    Capped at ``exp(100) - 1`` for paths too short to annualise without overflow.
    """
    e, ppy = _check_equity(equity), _check_ppy(periods_per_year)
    years = (e.size - 1) / ppy
    log_growth = np.log(e[-1] / e[0]) / years
    return float(np.expm1(min(log_growth, _MAX_LOG_GROWTH)))


def drawdown(equity) -> np.ndarray:
    """Fraction below the running peak at each point, shape (T+1,), in [0, 1); 0 at a new peak."""
    e = _check_equity(equity)
    return 1.0 - e / np.maximum.accumulate(e)


def max_drawdown(equity) -> float:
    """Deepest fall from a previous peak, as a positive fraction (0.0 for a path that never falls)."""
    return float(drawdown(equity).max())


def max_drawdown_bars(equity) -> int:
    """Duration: the longest run of consecutive points strictly below a previous peak, in bars.

    A stretch still open at the end of the path counts up to the last bar.
    """
    under = np.concatenate(([False], drawdown(equity) > 0, [False])).astype(np.int8)
    edges = np.diff(under)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if starts.size else 0


def calmar(equity, periods_per_year: float) -> float:
    """CAGR over max drawdown (both fractions); 0.0 for a path with no drawdown."""
    return _ratio(cagr(equity, periods_per_year), max_drawdown(equity))


# --------------------------------------------------------------------------- return metrics


def volatility(returns, periods_per_year: float) -> float:
    """Annualised standard deviation of bar returns: ``std(r, ddof=1) x sqrt(ppy)``; 0.0 if T < 2."""
    r, ppy = _check_returns(returns), _check_ppy(periods_per_year)
    return float(r.std(ddof=1) * np.sqrt(ppy)) if r.size > 1 else 0.0


def sharpe(returns, periods_per_year: float) -> float:
    """Annualised Sharpe ratio, rf = 0: ``mean(r) / std(r, ddof=1) x sqrt(ppy)``.

    0.0 when the standard deviation is zero (a flat or constant-return path) or T < 2.
    """
    r, ppy = _check_returns(returns), _check_ppy(periods_per_year)
    if r.size < 2:
        return 0.0
    return _ratio(r.mean(), r.std(ddof=1)) * float(np.sqrt(ppy))


def sortino(returns, periods_per_year: float) -> float:
    """Annualised Sortino ratio: ``mean(r) / sqrt(mean(min(r, 0)^2)) x sqrt(ppy)``.

    The downside deviation averages over all T bars (gains count as zero). 0.0 with no losing bar.
    """
    r, ppy = _check_returns(returns), _check_ppy(periods_per_year)
    downside = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))
    return _ratio(r.mean(), downside) * float(np.sqrt(ppy))


def cvar(returns, level: float = 0.05) -> float:
    """Expected shortfall: minus the mean of the worst ``max(1, floor(level x T))`` bar returns.

    A loss is positive (0.03 = the worst bars lose 3% on average); negative if even they gain.
    """
    r = _check_returns(returns)
    if not 0 < level <= 1:
        raise MetricsError(f"level must be in (0, 1], got {level!r}")
    k = max(1, int(np.floor(level * r.size)))
    return float(-np.sort(r)[:k].mean())


def win_rate(returns, exposure) -> float:
    """Fraction of bars held with nonzero exposure whose return is > 0; 0.0 if no bar is exposed."""
    r = _check_returns(returns)
    held = _check_per_bar(exposure, "exposure", r.size) != 0
    return float(np.mean(r[held] > 0)) if held.any() else 0.0


# --------------------------------------------------------------------------- aggregator


def performance(equity: np.ndarray, *, periods_per_year: float, exposure: np.ndarray | None = None,
                turnover: np.ndarray | None = None, costs: np.ndarray | None = None,
                overrides: int = 0, n_trades: int | None = None) -> dict[str, float]:
    """All metrics of one backtest path as plain, finite floats (keys: :data:`METRIC_KEYS`).

    :param equity: dollars, shape (T+1,): initial equity, then after each bar's close.
    :param periods_per_year: bars per year (``BarFrequency.periods_per_year``).
    :param exposure: (T,) signed net exposure held over each bar, fraction of equity; None = flat.
    :param turnover: (T,) traded notional / equity per bar (>= 0); None = no trading.
    :param costs: (T,) trading costs per bar, dollars; None = free.
    :param overrides: number of times a risk mask or limit overrode the policy.
    :param n_trades: number of trades; by default the number of bars with turnover > 0.
    :returns: ``total_return``, ``cagr``, ``volatility``, ``sharpe``, ``sortino``, ``calmar``,
        ``max_drawdown`` (fractions, annual where it applies); ``max_drawdown_bars`` (bars);
        ``cvar_5`` (fraction, loss positive); ``turnover`` (mean per-bar turnover x ppy, equity
        turned over per year); ``cost_drag`` (total costs / initial equity) and ``cost_drag_ann``
        (the same per year); ``exposure`` (mean |exposure|); ``win_rate``; ``overrides``,
        ``n_bars``, ``n_trades`` (counts as floats).
    """
    e, ppy = _check_equity(equity), _check_ppy(periods_per_year)
    n_bars = e.size - 1
    x = _check_per_bar(exposure, "exposure", n_bars)
    to = _check_per_bar(turnover, "turnover", n_bars)
    c = _check_per_bar(costs, "costs", n_bars)
    if np.any(to < 0):
        raise MetricsError("turnover must be >= 0 (traded notional / equity, unsigned)")
    if overrides < 0 or (n_trades is not None and n_trades < 0):
        raise MetricsError(f"overrides and n_trades must be >= 0, got {overrides}, {n_trades}")
    r = e[1:] / e[:-1] - 1.0
    cost_drag = float(c.sum() / e[0])
    out = {
        "total_return": total_return(e),
        "cagr": cagr(e, ppy),
        "volatility": volatility(r, ppy),
        "sharpe": sharpe(r, ppy),
        "sortino": sortino(r, ppy),
        "calmar": calmar(e, ppy),
        "max_drawdown": max_drawdown(e),
        "max_drawdown_bars": float(max_drawdown_bars(e)),
        "cvar_5": cvar(r, 0.05),
        "turnover": float(to.mean() * ppy),
        "cost_drag": cost_drag,
        "cost_drag_ann": cost_drag * ppy / n_bars,
        "exposure": float(np.abs(x).mean()),
        "win_rate": win_rate(r, x),
        "overrides": float(overrides),
        "n_bars": float(n_bars),
        "n_trades": float(np.count_nonzero(to > 0) if n_trades is None else n_trades),
    }
    return {k: float(out[k]) for k in METRIC_KEYS}


# --------------------------------------------------------------------------- uncertainty


def _stationary_indices(rng: np.random.Generator, n_obs: int, n_samples: int, block: float) -> np.ndarray:
    """(n_samples, n_obs) indices of a stationary bootstrap (Politis & Romano, 1994).

    Blocks start at uniform positions, have geometric lengths with mean ``block`` and wrap
    around the end of the series (circular).
    """
    starts = rng.integers(0, n_obs, size=(n_samples, n_obs))
    new_block = rng.random((n_samples, n_obs)) < 1.0 / block
    new_block[:, 0] = True
    pos = np.arange(n_obs)
    block_first = np.maximum.accumulate(np.where(new_block, pos, 0), axis=1)
    return (np.take_along_axis(starts, block_first, axis=1) + pos - block_first) % n_obs


def block_bootstrap_ci(returns, stat: Callable[[np.ndarray], float], *, block: float | None = None,
                       n: int = 1000, alpha: float = 0.05, seed: int) -> tuple[float, float]:
    """Percentile confidence interval of ``stat`` by a stationary block bootstrap of bar returns.

    Resampling blocks (rather than single bars) keeps the short-range dependence of returns.

    :param returns: bar returns (fractions), shape (T,).
    :param stat: maps a (T,) return array to a number, e.g. ``lambda r: sharpe(r, ppy)``.
    :param block: mean block length in bars (>= 1); default ``max(1, round(T ** (1/3)))``.
    :param n: number of bootstrap resamples.
    :param alpha: the interval covers ``1 - alpha``.
    :param seed: seed of the numpy Generator; the same seed gives the same interval.
    :returns: (lower, upper) quantiles ``alpha/2`` and ``1 - alpha/2`` of the resampled ``stat``.
    """
    r = _check_returns(returns)
    block = max(1, round(r.size ** (1 / 3))) if block is None else block
    if not block >= 1:
        raise MetricsError(f"block must be a mean block length >= 1 bar, got {block!r}")
    if n < 1:
        raise MetricsError(f"n must be at least 1 resample, got {n!r}")
    if not 0 < alpha < 1:
        raise MetricsError(f"alpha must be in (0, 1), got {alpha!r}")
    idx = _stationary_indices(np.random.default_rng(seed), r.size, n, float(block))
    draws = np.array([stat(r[row]) for row in idx], dtype=float)
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def probabilistic_sharpe(returns, benchmark_sharpe: float = 0.0) -> float:
    """Probabilistic Sharpe ratio (Bailey & Lopez de Prado, 2012): P(true Sharpe > benchmark).

    ``PSR = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))`` with SR the
    per-bar Sharpe (``mean / std(ddof=1)``, 0 at zero variance), g3 the skewness and g4 the
    (non-excess) kurtosis of the bar returns.

    :param returns: bar returns (fractions), shape (T,), T >= 2.
    :param benchmark_sharpe: SR* **per bar** (an annual Sharpe divided by ``sqrt(ppy)``).
    :returns: a probability in [0, 1].
    """
    r = _check_returns(returns)
    if r.size < 2:
        raise MetricsError(f"returns needs at least 2 bars for a probabilistic Sharpe, got {r.size}")
    sd = r.std(ddof=1)
    if sd > _EPS:
        sr, g3, g4 = r.mean() / sd, float(stats.skew(r)), float(stats.kurtosis(r, fisher=False))
    else:  # undefined moments: Sharpe 0 as in ``sharpe``, normal shape
        sr, g3, g4 = 0.0, 0.0, 3.0
    # >= (1 - g3 SR / 2)^2 >= 0 since g4 >= 1 + g3^2; floored against rounding
    var = max(1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2, _EPS)
    return float(stats.norm.cdf((sr - benchmark_sharpe) * np.sqrt(r.size - 1) / np.sqrt(var)))


# --------------------------------------------------------------------------- slices and intervals


def sharpe_uncertainty(equity, periods_per_year: float, *, seed: int, n: int = 1000, alpha: float = 0.05) -> dict[str, float]:
    """How much of a path's Sharpe ratio could be luck: ``psr`` (:func:`probabilistic_sharpe` against
    0) and the ``1 - alpha`` stationary-bootstrap interval of the annualised Sharpe, ``sharpe_low`` ..
    ``sharpe_high`` (:func:`block_bootstrap_ci`, mean block ``T ** (1/3)`` bars). Paths of fewer than
    4 bars get no interval (both ends 0)."""
    r = bar_returns(_check_equity(equity))
    ppy = _check_ppy(periods_per_year)
    out = {"psr": probabilistic_sharpe(r) if r.size >= 2 else 0.5, "sharpe_low": 0.0, "sharpe_high": 0.0}
    if r.size >= 4:
        out["sharpe_low"], out["sharpe_high"] = block_bootstrap_ci(r, lambda x: sharpe(x, ppy), n=n, alpha=alpha, seed=seed)
    return out


def regime_slices(equity, regime: np.ndarray, n_regimes: int, periods_per_year: float) -> dict[str, float]:
    """A path's bars split by the regime in force when each bar's position was decided.

    :param regime: (T,) the filtered regime at the decision before each of the T bars (-1: none).
    :returns: per regime ``k``: ``regime_k_bars``, the per-bar ``regime_k_mean`` and ``regime_k_sd``
        (ddof=1, 0 below 2 bars) that :func:`pool_regime_slices` pools over folds, the annualised
        ``regime_k_sharpe`` and the compounded ``regime_k_return`` of those bars.
    """
    r = bar_returns(_check_equity(equity))
    reg = np.asarray(regime)
    if reg.shape != r.shape:
        raise MetricsError(f"regime must give one regime per bar: {reg.shape} for {r.size} bars")
    ppy = _check_ppy(periods_per_year)
    out: dict[str, float] = {}
    for k in range(n_regimes):
        x = r[reg == k]
        out.update(_slice(f"regime_{k}", x.size, float(x.mean()) if x.size else 0.0,
                          float(x.std(ddof=1)) if x.size >= 2 else 0.0, float(np.prod(1.0 + x) - 1.0), ppy))
    return out


def _slice(prefix: str, bars: int, mean: float, sd: float, compounded: float, ppy: float) -> dict[str, float]:
    return {f"{prefix}_bars": float(bars), f"{prefix}_mean": mean, f"{prefix}_sd": sd,
            f"{prefix}_sharpe": _ratio(mean, sd) * float(np.sqrt(ppy)) if bars >= 2 else 0.0,
            f"{prefix}_return": compounded}


def pool_regime_slices(slices: list[dict[str, float]], n_regimes: int, periods_per_year: float) -> dict[str, float]:
    """:func:`regime_slices` of several paths (folds) pooled as if their bars were one series:
    exact pooled mean and variance from each part's count, mean and sd; returns compounded."""
    ppy = _check_ppy(periods_per_year)
    out: dict[str, float] = {}
    for k in range(n_regimes):
        p = f"regime_{k}"
        parts = [(s[f"{p}_bars"], s[f"{p}_mean"], s[f"{p}_sd"], s[f"{p}_return"]) for s in slices if s.get(f"{p}_bars", 0) > 0]
        n = sum(c for c, *_ in parts)
        mean = sum(c * m for c, m, *_ in parts) / n if n else 0.0
        ss = sum((c - 1) * sd**2 + c * m**2 for c, m, sd, _ in parts) - n * mean**2
        sd = float(np.sqrt(max(ss, 0.0) / (n - 1))) if n >= 2 else 0.0
        out.update(_slice(p, int(n), mean, sd, float(np.prod([1.0 + ret for *_, ret in parts]) - 1.0), ppy))
    return out
