"""The run summary's promotion section: the gate as a table of checks, the equity plot, results by regime."""

from __future__ import annotations

from sentio_core.promotion import Check
from sentio_core.report import Registration, format_table, gate_markdown, gate_rows, regime_rows, run_summary_markdown

CHECKS = [Check("deflated Sharpe", 0.41, ">= 0.95", "FAIL", "Sharpe 0.80 a year against 1.10, the best of 12 trials"),
          Check("PBO", None, "<= 0.2", "reported", "3 configurations; reported only")]


def test_the_gate_is_a_table_of_checks_with_value_threshold_and_verdict():
    assert gate_rows(CHECKS) == [{"check": "deflated Sharpe", "value": "0.410", "needs": ">= 0.95", "verdict": "FAIL"},
                                 {"check": "PBO", "value": "n/a", "needs": "<= 0.2", "verdict": "reported"}]
    md = gate_markdown(CHECKS)
    assert md[:4] == ["| check | value | needs | verdict |", "|---|---|---|---|",
                      "| deflated Sharpe | 0.410 | >= 0.95 | **FAIL** |", "| PBO | n/a | <= 0.2 | **reported** |"]
    assert "- *deflated Sharpe*: Sharpe 0.80 a year against 1.10, the best of 12 trials" in md
    assert "deflated Sharpe" in format_table(gate_rows(CHECKS))


def test_the_run_summary_shows_the_gate_the_plot_and_the_regimes():
    pooled = {"maskable_ppo": {"regime_0_bars": 300.0, "regime_0_sharpe": 1.234, "regime_0_return": 0.1,
                               "regime_1_bars": 200.0, "regime_1_sharpe": -0.5, "regime_1_return": -0.05}}
    reg = Registration(version="4", alias="challenger", checks=CHECKS, n_trials=12, parent_run_id="p", child_run_ids={},
                       export=None, tracking_uri="sqlite:///m.db", experiment_id="1", evidence_png=b"\x89PNG",
                       regimes=regime_rows(pooled, 2))
    md = run_summary_markdown(["aligned"], "features: 98", {"register": "Completed"}, registration=reg)
    assert "Model version 4 -> alias **challenger**. The gate, with 12 trials in the ledger" in md
    assert "| deflated Sharpe | 0.410 | >= 0.95 | **FAIL** |" in md
    assert "![out-of-sample equity with the bootstrap band](data:image/png;base64,iVBORw==)" in md
    assert "## Results by regime" in md and "| maskable_ppo | 0 | 300 | 1.23 | 10.0% |" in md
