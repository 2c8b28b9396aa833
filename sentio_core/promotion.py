"""Cross-fold evaluation and the promotion gate (pure: metrics in, decision out)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sentio_core.algorithms import BASELINE, PRIMARY  # the promoted algorithm, and the baseline it must beat
from sentio_core.config import PromotionConfig


@dataclass(frozen=True)
class GateResult:
    passed: bool
    alias: str  # champion or challenger
    reasons: list[str]  # every check, passed or failed, in words
    summary: dict[str, dict[str, float]]  # strategy -> mean/min/max of the key metrics over folds

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


def promotion_gate(folds: list[dict[str, dict[str, float]]], cfg: PromotionConfig) -> GateResult:
    """Decide ``champion`` or ``challenger`` for the primary model from out-of-sample fold metrics.

    :param folds: one dict per fold, strategy name -> metrics (``sentio_core.metrics.performance``);
        must hold ``maskable_ppo``, ``ppo`` and ``flat``.
    """
    if not folds:
        raise ValueError("promotion_gate needs at least one fold")
    s = summarise(folds)
    needed = [PRIMARY, BASELINE, "flat"] + (["buy_hold_underlying"] if cfg.max_drawdown_vs_underlying is not None else [])
    missing = [k for k in needed if k not in s]
    if missing:
        raise ValueError(f"promotion_gate: no out-of-sample metrics for {missing}")
    m, p, f = s[PRIMARY], s[BASELINE], s["flat"]
    checks = [
        (m["mean_sharpe"] > p["mean_sharpe"] + cfg.min_sharpe_margin_vs_ppo,
         f"mean Sharpe {m['mean_sharpe']:.3f} vs PPO {p['mean_sharpe']:.3f} + {cfg.min_sharpe_margin_vs_ppo}"),
        (m["mean_sharpe"] > f["mean_sharpe"] + cfg.min_sharpe_margin_vs_flat,
         f"mean Sharpe {m['mean_sharpe']:.3f} vs flat {f['mean_sharpe']:.3f} + {cfg.min_sharpe_margin_vs_flat}"),
    ]
    if cfg.max_drawdown < 1.0:
        checks.append((m["worst_max_drawdown"] <= cfg.max_drawdown,
                       f"worst fold max drawdown {m['worst_max_drawdown']:.3f} <= {cfg.max_drawdown}"))
    if cfg.max_drawdown_vs_underlying is not None:
        cap = cfg.max_drawdown_vs_underlying * s["buy_hold_underlying"]["worst_max_drawdown"]
        checks.append((m["worst_max_drawdown"] <= cap,
                       f"worst fold max drawdown {m['worst_max_drawdown']:.3f} <= {cfg.max_drawdown_vs_underlying} x "
                       f"buy-and-hold underlying's {s['buy_hold_underlying']['worst_max_drawdown']:.3f}"))
    passed = all(ok for ok, _ in checks)
    reasons = [("pass: " if ok else "FAIL: ") + text for ok, text in checks]
    return GateResult(passed, "champion" if passed else "challenger", reasons, s)
