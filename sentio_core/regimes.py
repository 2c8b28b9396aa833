"""Volatility regimes of the underlying, fitted on one fold's training window.

Two backends: statsmodels ``MarkovRegression`` (switching mean and variance; the default) and
hmmlearn ``GaussianHMM`` (20-50x faster). Both are fitted from several starts and the best
log-likelihood is kept. Regimes are renumbered by variance (0 = calmest), so a label means the
same in every fold. Probabilities handed downstream are *filtered*: a forward recursion with the
fitted parameters, so the probability at t never changes when later bars are appended. Smoothed
or Viterbi paths are never produced here.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from sentio_core.config import Config, RegimeConfig, reads
from sentio_core.ranges import take

if TYPE_CHECKING:  # a record handed in by the folds stage (data only)
    from sentio_core.folds import FoldSpan

SCALE = 100.0  # returns are fitted in percent for numerical conditioning


@dataclass(frozen=True)
class RegimeModel:
    """Fitted regime parameters, already ordered by variance (index 0 = lowest volatility).

    ``means`` and ``variances`` are per-bar log-return moments in percent units.
    """

    backend: str
    n_regimes: int
    means: list[float]
    variances: list[float]
    transition: list[list[float]]  # transition[i][j] = P(next = j | now = i)
    initial: list[float]
    log_likelihood: float
    n_obs: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RegimeModel":
        return cls(**d)


def forward_filter(model: RegimeModel, returns: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """Filtered probabilities P(regime_t | r_1..r_t), shape (T, n_regimes).

    A plain Hamilton/forward recursion with Gaussian emissions; each row depends only on the
    returns up to that row.

    :param prior: P(regime of the first return | the returns before it): the model's initial
        distribution when None; :func:`predict_next` of the last filtered row to carry a filter on
        (the rows are then exactly those of one run over both series).
    """
    x = np.asarray(returns, dtype=float) * SCALE
    mu, var = np.asarray(model.means), np.asarray(model.variances)
    trans = np.asarray(model.transition)
    log_b = -0.5 * (np.log(2 * np.pi * var)[None, :] + (x[:, None] - mu[None, :]) ** 2 / var[None, :])
    out = np.empty((len(x), model.n_regimes))
    prior = np.asarray(model.initial if prior is None else prior)
    for t in range(len(x)):
        lik = np.exp(log_b[t] - log_b[t].max())
        post = prior * lik
        post /= post.sum()
        out[t] = post
        prior = post @ trans
    return out


def predict_next(model: RegimeModel, filtered: np.ndarray) -> np.ndarray:
    """P(regime of the next return | the returns so far) from the last filtered row: the
    :func:`forward_filter` prior that continues it."""
    return np.asarray(filtered) @ np.asarray(model.transition)


def _ordered(backend: str, means, variances, transition, initial, llf: float, n: int) -> RegimeModel:
    order = np.argsort(np.asarray(variances))
    trans = np.asarray(transition)[np.ix_(order, order)]
    return RegimeModel(
        backend=backend,
        n_regimes=len(order),
        means=[float(v) for v in np.asarray(means)[order]],
        variances=[float(v) for v in np.asarray(variances)[order]],
        transition=[[float(v) for v in row] for row in trans],
        initial=[float(v) for v in np.asarray(initial)[order]],
        log_likelihood=float(llf),
        n_obs=n,
    )


def _stationary(trans: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eig(trans.T)
    v = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    v = np.abs(v)
    return v / v.sum()


def _fit_markov(x: np.ndarray, cfg: RegimeConfig, rng: np.random.Generator) -> RegimeModel:
    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    mod = MarkovRegression(x, k_regimes=cfg.n_regimes, trend="c", switching_variance=True)
    base = mod.untransform_params(mod.start_params)
    best = None
    for start in range(cfg.n_starts):
        params0 = mod.start_params if start == 0 else mod.transform_params(base + rng.normal(0.0, 0.5, size=base.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = mod.fit(start_params=params0, maxiter=cfg.max_iter, disp=False)
            except (np.linalg.LinAlgError, ValueError):
                continue
        if np.isfinite(res.llf) and (best is None or res.llf > best.llf):
            best = res
    if best is None:
        raise RuntimeError(f"the Markov regime model did not converge from any of {cfg.n_starts} starts")
    names = list(mod.param_names)
    k = cfg.n_regimes
    p = np.asarray(best.params)
    means = [p[names.index(f"const[{i}]")] for i in range(k)]
    variances = [p[names.index(f"sigma2[{i}]")] for i in range(k)]
    # statsmodels' regime_transition[j, i] = P(next = j | now = i)
    trans = np.asarray(mod.regime_transition_matrix(p))[..., 0].T
    return _ordered("markov", means, variances, trans, _stationary(trans), best.llf, len(x))


def _fit_hmm(x: np.ndarray, cfg: RegimeConfig, rng: np.random.Generator) -> RegimeModel:
    from hmmlearn.hmm import GaussianHMM

    best, best_score = None, -np.inf
    for _ in range(cfg.n_starts):
        hmm = GaussianHMM(n_components=cfg.n_regimes, covariance_type="diag", n_iter=cfg.max_iter,
                          random_state=int(rng.integers(2**31 - 1)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hmm.fit(x.reshape(-1, 1))
            score = hmm.score(x.reshape(-1, 1))
        if np.isfinite(score) and score > best_score:
            best, best_score = hmm, score
    if best is None:
        raise RuntimeError(f"the Gaussian HMM did not fit from any of {cfg.n_starts} starts")
    variances = best.covars_.reshape(cfg.n_regimes, -1)[:, 0]
    return _ordered("hmm", best.means_[:, 0], variances, best.transmat_, best.startprob_, best_score, len(x))


def fit_regimes(returns: np.ndarray, cfg: RegimeConfig, seed: int) -> RegimeModel:
    """Fit the regime model on a training window's 1-bar log returns.

    :param returns: shape (T,), per-bar log returns of the underlying (fraction, not percent).
    :param seed: seeds the random restarts; the same seed gives the same model.
    """
    x = np.asarray(returns, dtype=float)
    if not np.isfinite(x).all():
        raise ValueError("regime returns contain NaN or infinite values")
    if len(x) < 10 * cfg.n_regimes:
        raise ValueError(f"{len(x)} training returns are too few for {cfg.n_regimes} regimes; add data or lower regimes.n_regimes")
    rng = np.random.default_rng(seed)
    fit = _fit_markov if cfg.backend == "markov" else _fit_hmm
    return fit(x * SCALE, cfg, rng)


def regime_shares(probs: np.ndarray) -> list[float]:
    """Fraction of bars whose most likely filtered regime is each regime."""
    if len(probs) == 0:
        return [0.0] * probs.shape[1]
    counts = np.bincount(np.argmax(probs, axis=1), minlength=probs.shape[1])
    return [float(c) / len(probs) for c in counts]


def underlying(cfg: Config, bars: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The underlying's ``timestamp`` and ``close``, in time order (the panel may be scanned lazily)."""
    return (bars.lazy().filter(pl.col("symbol") == cfg.universe.underlying).select("timestamp", "close")
            .sort("timestamp").collect())


def underlying_returns(cfg: Config, bars: pl.DataFrame | pl.LazyFrame) -> np.ndarray:
    """1-bar log returns of the underlying, one per panel timestamp (the first is NaN)."""
    close = underlying(cfg, bars)["close"].to_numpy()
    out = np.full(len(close), np.nan)
    out[1:] = np.log(close[1:] / close[:-1])
    return out


def regime_frame(timestamps: pl.Series, probs: np.ndarray) -> pl.DataFrame:
    """``timestamp, regime_0..K-1`` from filtered probabilities of shape (T, K)."""
    if len(timestamps) != len(probs):
        raise ValueError(f"{len(timestamps)} timestamps for {len(probs)} rows of regime probabilities")
    # built as it is, without a query: a live decision pays for this table on every bar
    return pl.DataFrame({"timestamp": timestamps, **{f"regime_{k}": probs[:, k] for k in range(probs.shape[1])}})


@dataclass(frozen=True)
class FoldRegimes:
    """One fold's regime fit: the model, its filtered probabilities and the regime shares of each window."""

    model: RegimeModel
    probabilities: pl.DataFrame  # timestamp, regime_0..K-1, from train start to test end
    train_shares: list[float]
    test_shares: list[float]


@reads("regimes", "seed", "universe")
def fold_regimes(cfg: Config, bars: pl.DataFrame | pl.LazyFrame, span: FoldSpan) -> FoldRegimes:
    """Fit the regime model on one fold's training rows (seeded with ``cfg.fold_seed``), then
    filter forward through its test rows.

    A combinatorial split's training ranges are fitted as one series (each gap joins two returns
    that are not neighbours: a handful of transitions among thousands), and the filter runs from its
    first row to its last, through the test blocks: the filter is causal, and the model's parameters
    never saw a test row."""
    r = underlying_returns(cfg, bars)
    if not span.train_ranges:
        (a, b), (c, d) = span.train_rows, span.test_rows
        model = fit_regimes(r[a:b], cfg.regimes, seed=cfg.fold_seed(span.fold))
        probs = forward_filter(model, r[a:d])
        timestamps = underlying(cfg, bars)["timestamp"]
        return FoldRegimes(model, regime_frame(timestamps[a:d], probs), regime_shares(probs[: b - a]),
                           regime_shares(probs[c - a:]))
    model = fit_regimes(take(r, span.train_ranges), cfg.regimes, seed=cfg.fold_seed(span.fold))
    a, d = min(span.train_rows[0], span.test_rows[0]), span.end_row
    probs = forward_filter(model, r[a:d])
    shifted = lambda ranges: tuple((x - a, y - a) for x, y in ranges)  # noqa: E731
    timestamps = underlying(cfg, bars)["timestamp"]
    return FoldRegimes(model, regime_frame(timestamps[a:d], probs), regime_shares(take(probs, shifted(span.train_ranges))),
                       regime_shares(take(probs, shifted(span.testing_ranges))))
