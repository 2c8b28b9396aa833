"""Cross-check of sentio_core.evidence against an independent implementation (skfolio).

skfolio is not a Sentio dependency (its dependency tree is large); run this in any environment
where it installs, with the repository on the path:

  python -m venv /tmp/skv && /tmp/skv/bin/pip install skfolio
  PYTHONPATH=. /tmp/skv/bin/python scripts/crosscheck_evidence.py

Prints the expected maximum Sharpe of the DSR paper's example from both, and the largest absolute
difference of the deflated and probabilistic Sharpe ratios over random cases (fat-tailed returns,
2-60 trials, 100-1,500 bars). Sentio's ``var_sharpe`` is the trials' Sharpe variance with ddof 1,
as skfolio computes it from ``trial_sharpe_ratios``.
"""

from __future__ import annotations

import math

import numpy as np
from skfolio import measures

from sentio_core import evidence


def main() -> None:
    ours, theirs = evidence.expected_max_sharpe(100, 0.5 / 250), measures.expected_max_sharpe_ratio(100, math.sqrt(0.5 / 250))
    print(f"expected max Sharpe, 100 trials, annual variance 0.5, daily: sentio {ours:.10f}, skfolio {theirs:.10f}")
    rng = np.random.default_rng(0)
    worst_dsr = worst_psr = 0.0
    cases = 500
    for _ in range(cases):
        t, n = int(rng.integers(100, 1500)), int(rng.integers(2, 60))
        r = rng.standard_t(4, t) * 0.01 + rng.normal(0.0005, 0.0002)
        trials = rng.normal(0.0, rng.uniform(0.01, 0.1), n)
        dsr = evidence.deflated_sharpe(r, n, float(np.var(trials, ddof=1)))
        worst_dsr = max(worst_dsr, abs(dsr - measures.deflated_sharpe_ratio(r, trials)))
        benchmark = float(rng.uniform(-0.05, 0.05))
        sr, skew, kurt, bars = evidence.sharpe_moments(r)
        psr = evidence.psr_from_moments(sr, bars, skew, kurt, benchmark)
        worst_psr = max(worst_psr, abs(psr - measures.probabilistic_sharpe_ratio(r, benchmark)))
    print(f"{cases} random cases: largest |difference| deflated Sharpe {worst_dsr:.2e}, probabilistic Sharpe {worst_psr:.2e}")


if __name__ == "__main__":
    main()
