"""The promotion gate: out-of-sample evidence in, a decision with every check's value and verdict out.

A candidate (the primary algorithm's chosen policy of each fold, its test windows concatenated)
becomes ``champion`` only when every gating check passes:

1. **Deflated Sharpe ratio** >= ``min_deflated_sharpe``: the probability that its Sharpe ratio beats
   the best of the ledger's ``n_trials`` skill-free trials (:mod:`sentio_core.trials`).
2. **Probability of backtest overfitting** <= ``max_pbo`` over the run's configurations (each
   algorithm x seed is a column), gating only with at least ``pbo_min_configurations`` of them.
3. **A paired win over PPO**: the stationary-bootstrap p-value of "Sharpe no higher than PPO's on
   the same bars" at most ``paired_alpha``.
4. **A paired win over the current champion** on the bars it never trained on (after its training
   window and purge); reported without gating when there is no champion, it could not be scored,
   or fewer than ``min_champion_bars`` such bars are in the candidate's test windows.
5. **Drawdown**: the worst fold's max drawdown within ``max_drawdown`` and within
   ``max_drawdown_vs_underlying`` x buy-and-hold of the underlying's.

The paired comparison with buy-and-hold of the underlying is reported beside them and does not gate.
Pure: numpy in, :class:`GateResult` out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from sentio_core.algorithms import BASELINE, PRIMARY  # the promoted algorithm, and the baseline it must beat
from sentio_core.config import PromotionConfig
from sentio_core.evidence import (expected_max_sharpe, paired_sharpe_test, pbo, psr_from_moments, sharpe_interval,
                                  sharpe_moments)
from sentio_core.metrics import MetricsError
from sentio_core.trials import LedgerStats

PASS, FAIL, REPORTED = "pass", "FAIL", "reported"
#: The paired comparisons show a two-sided 90 % interval of the Sharpe difference: its lower end is
#: the bound of a one-sided 5 % test (the default ``paired_alpha``), whatever level the gate uses.
INTERVAL_TAIL = 0.05
UNDERLYING = "buy_hold_underlying"


@dataclass(frozen=True)
class Check:
    """One line of the gate: what was measured, against what, and whether it decides."""

    name: str
    value: float | None
    threshold: str
    verdict: str  # pass, FAIL, or reported (shown, does not gate)
    detail: str

    @property
    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.verdict}: {self.name} {value} (needs {self.threshold}); {self.detail}"


@dataclass(frozen=True)
class ChampionReturns:
    """The current champion on the bars after its training window and purge (its re-score).

    :param status: ``scored``, ``no champion`` or ``failed`` (could not be scored; counts as absent).
    """

    status: str
    timestamps: list[str] = field(default_factory=list)  # each P&L bar's close
    returns: list[float] = field(default_factory=list)
    version: str | None = None


@dataclass(frozen=True)
class GateInputs:
    """The out-of-sample returns the gate reads, all on the folds' test bars in fold order.

    :param configurations: every policy this run trained, as one column each (``maskable_ppo_seed0``,
        ... or the algorithm's name with one seed): the PBO matrix.
    """

    timestamps: Sequence[str]
    candidate: np.ndarray
    ppo: np.ndarray
    underlying: np.ndarray
    configurations: dict[str, np.ndarray]
    ledger: LedgerStats
    champion: ChampionReturns
    periods_per_year: float


@dataclass(frozen=True)
class GateResult:
    passed: bool
    alias: str  # champion or challenger
    checks: list[Check]
    summary: dict[str, dict[str, float]]  # strategy -> mean/min/max of the key metrics over folds
    evidence: dict = field(default_factory=dict)  # the statistics behind the checks (JSON-friendly)

    @property
    def reasons(self) -> list[str]:
        """Every check, in words."""
        return [c.line for c in self.checks]

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(folds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per strategy: mean Sharpe, return and turnover; worst max drawdown; total overrides."""
    out: dict[str, dict[str, float]] = {}
    for name in folds[0]:
        rows = [f[name] for f in folds if name in f]
        out[name] = {
            "mean_sharpe": float(np.mean([r["sharpe"] for r in rows])),
            "mean_total_return": float(np.mean([r["total_return"] for r in rows])),
            "worst_max_drawdown": float(np.max([r["max_drawdown"] for r in rows])),
            "mean_turnover": float(np.mean([r["turnover"] for r in rows])),
            "overrides": float(np.sum([r["overrides"] for r in rows])),
            "folds": float(len(rows)),
        }
    return out


def _verdict(ok: bool, gates: bool = True) -> str:
    return REPORTED if not gates else PASS if ok else FAIL


def _paired(name: str, candidate: np.ndarray, other: np.ndarray, cfg: PromotionConfig, seed: int, ppy: float) -> dict:
    t = paired_sharpe_test(candidate, other, block=cfg.bootstrap_block_bars, n=cfg.bootstrap_samples,
                           alpha=2 * INTERVAL_TAIL, seed=seed)
    scale = math.sqrt(ppy)
    return {"against": name, "bars": int(candidate.size), "sharpe_difference_ann": t.difference * scale,
            "low_ann": t.low * scale, "high_ann": t.high * scale, "p_value": t.p_value, "block_bars": t.block,
            "resamples": t.n, "interval": 1 - 2 * INTERVAL_TAIL}


def _paired_detail(p: dict) -> str:
    return (f"Sharpe difference {p['sharpe_difference_ann']:+.2f} a year, {p['interval']:.0%} interval "
            f"[{p['low_ann']:+.2f}, {p['high_ann']:+.2f}] over {p['bars']} bars (stationary bootstrap, "
            f"mean block {p['block_bars']:.1f} bars, {p['resamples']} resamples)")


def champion_overlap(timestamps: Sequence[str], candidate: np.ndarray,
                     champion: ChampionReturns) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The candidate's and the champion's returns on the bars both have (in the candidate's order)."""
    theirs = dict(zip(champion.timestamps, champion.returns))
    rows = [i for i, ts in enumerate(timestamps) if ts in theirs]
    return (candidate[rows], np.array([theirs[timestamps[i]] for i in rows], dtype=float),
            [timestamps[i] for i in rows])


def _deflated(x: GateInputs, cfg: PromotionConfig, seed: int) -> tuple[Check, dict]:
    sr, skew, kurt, n = sharpe_moments(x.candidate)
    sr0 = expected_max_sharpe(x.ledger.n_trials, x.ledger.var_sharpe)
    dsr = psr_from_moments(sr, n, skew, kurt, sr0)
    psr = psr_from_moments(sr, n, skew, kurt, 0.0)
    scale = math.sqrt(x.periods_per_year)
    low, high = (v * scale for v in sharpe_interval(x.candidate, block=cfg.bootstrap_block_bars, n=cfg.bootstrap_samples,
                                                    alpha=0.05, seed=seed + 3))
    ev = {"sharpe_ann": sr * scale, "sharpe_low_ann": low, "sharpe_high_ann": high, "skewness": skew, "kurtosis": kurt,
          "bars": n, "psr": psr, "expected_max_sharpe_ann": sr0 * scale, "deflated_sharpe": dsr, **x.ledger.to_dict()}
    detail = (f"Sharpe {sr * scale:.2f} a year (95% bootstrap interval [{low:.2f}, {high:.2f}], probabilistic Sharpe "
              f"{psr:.3f}) over {n} bars (skew {skew:.2f}, kurtosis {kurt:.1f}) against {sr0 * scale:.2f}, the expected "
              f"best of {x.ledger.n_trials} skill-free trials (sd of the trials' Sharpe "
              f"{math.sqrt(x.ledger.var_sharpe) * scale:.2f} a year)")
    return Check("deflated Sharpe", dsr, f">= {cfg.min_deflated_sharpe}", _verdict(dsr >= cfg.min_deflated_sharpe), detail), ev


def _overfitting(x: GateInputs, cfg: PromotionConfig) -> tuple[Check, dict]:
    n_conf = len(x.configurations)
    gates = n_conf >= cfg.pbo_min_configurations
    why = "" if gates else f"; reported only: fewer than {cfg.pbo_min_configurations} configurations"
    if n_conf < 2:
        return Check("PBO", None, f"<= {cfg.max_pbo}", REPORTED, f"{n_conf} configuration: nothing was selected"), {}
    try:
        res = pbo(np.column_stack(list(x.configurations.values())), n_blocks=cfg.pbo_blocks)
    except MetricsError as exc:
        return Check("PBO", None, f"<= {cfg.max_pbo}", _verdict(False, gates), f"not computable: {exc}{why}"), {}
    q = np.quantile(res.logits, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    ev = {"pbo": res.pbo, "configurations": list(x.configurations), "splits": res.n_splits, "blocks": res.n_blocks,
          "logit_quantiles": dict(zip(("min", "q10", "q25", "median", "q75", "q90", "max"), map(float, q))),
          "logit_mean": float(res.logits.mean()), "logit_histogram": _histogram(res.logits)}
    detail = (f"CSCV over {n_conf} configurations (each algorithm x seed), {res.n_blocks} blocks, {res.n_splits} "
              f"splits; median logit {q[3]:+.2f}{why}")
    return Check("PBO", res.pbo, f"<= {cfg.max_pbo}", _verdict(res.pbo <= cfg.max_pbo, gates), detail), ev


def _histogram(logits: np.ndarray, bins: int = 12) -> dict[str, list[float]]:
    finite = logits[np.isfinite(logits)]
    counts, edges = np.histogram(finite, bins=bins) if finite.size else (np.zeros(0), np.zeros(0))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _against_champion(x: GateInputs, cfg: PromotionConfig, seed: int) -> tuple[Check, dict | None]:
    threshold = f"p <= {cfg.paired_alpha}"
    if x.champion.status != "scored":
        text = {"no champion": "no champion yet", "failed": "the champion could not be scored (treated as absent)"}
        return Check("paired win over champion", None, threshold, REPORTED,
                     text.get(x.champion.status, x.champion.status)), None
    mine, theirs, _ = champion_overlap(x.timestamps, x.candidate, x.champion)
    if mine.size < max(cfg.min_champion_bars, 4):
        return Check("paired win over champion", None, threshold, REPORTED,
                     f"only {mine.size} of the candidate's test bars are after the champion's training window and "
                     f"purge; at least {cfg.min_champion_bars} are needed to judge it"), {"bars": int(mine.size)}
    p = _paired("champion", mine, theirs, cfg, seed + 2, x.periods_per_year)
    detail = f"version {x.champion.version or '?'} on the bars after its training window and purge: {_paired_detail(p)}"
    return Check("paired win over champion", p["p_value"], threshold, _verdict(p["p_value"] <= cfg.paired_alpha), detail), p


def promotion_gate(folds: list[dict[str, dict[str, float]]], x: GateInputs, cfg: PromotionConfig, seed: int) -> GateResult:
    """Decide ``champion`` or ``challenger`` for the primary algorithm.

    :param folds: one dict per fold, strategy name -> metrics (``sentio_core.metrics.performance``);
        must hold the primary algorithm, PPO and buy-and-hold of the underlying.
    :param x: the concatenated out-of-sample returns and the ledger's statistics.
    :param seed: the bootstrap's seed (the config's ``seed``): the same inputs give the same verdicts.
    """
    if not folds:
        raise ValueError("promotion_gate needs at least one fold")
    s = summarise(folds)
    missing = [k for k in (PRIMARY, BASELINE, UNDERLYING) if k not in s]
    if missing:
        raise ValueError(f"promotion_gate: no out-of-sample metrics for {missing}")
    sizes = {x.candidate.size, x.ppo.size, x.underlying.size, len(x.timestamps), *(c.size for c in x.configurations.values())}
    if len(sizes) != 1:
        raise ValueError(f"promotion_gate: the return series must cover the same bars, got lengths {sorted(sizes)}")
    dsr_check, dsr = _deflated(x, cfg, seed)
    pbo_check, overfit = _overfitting(x, cfg)
    vs_ppo = _paired("ppo", x.candidate, x.ppo, cfg, seed, x.periods_per_year)
    vs_und = _paired(UNDERLYING, x.candidate, x.underlying, cfg, seed + 1, x.periods_per_year)
    champ_check, vs_champ = _against_champion(x, cfg, seed)
    checks = [dsr_check, pbo_check,
              Check("paired win over PPO", vs_ppo["p_value"], f"p <= {cfg.paired_alpha}",
                    _verdict(vs_ppo["p_value"] <= cfg.paired_alpha), _paired_detail(vs_ppo)),
              champ_check,
              Check("paired win over buy-and-hold", vs_und["p_value"], f"p <= {cfg.paired_alpha}", REPORTED,
                    _paired_detail(vs_und) + "; reported, does not gate")]
    m = s[PRIMARY]
    if cfg.max_drawdown < 1.0:
        checks.append(Check("worst fold max drawdown", m["worst_max_drawdown"], f"<= {cfg.max_drawdown}",
                            _verdict(m["worst_max_drawdown"] <= cfg.max_drawdown), "absolute cap"))
    if cfg.max_drawdown_vs_underlying is not None:
        under = s[UNDERLYING]["worst_max_drawdown"]
        cap = cfg.max_drawdown_vs_underlying * under
        checks.append(Check("worst fold max drawdown vs underlying", m["worst_max_drawdown"], f"<= {cap:.4g}",
                            _verdict(m["worst_max_drawdown"] <= cap),
                            f"{cfg.max_drawdown_vs_underlying} x buy-and-hold underlying's worst fold {under:.3f}"))
    passed = all(c.verdict != FAIL for c in checks)
    evidence = {"deflated": dsr, "pbo": overfit, "paired": {"ppo": vs_ppo, UNDERLYING: vs_und, "champion": vs_champ},
                "champion_status": x.champion.status, "champion_version": x.champion.version}
    return GateResult(passed, "champion" if passed else "challenger", checks, s, evidence)
