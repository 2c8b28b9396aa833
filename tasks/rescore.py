"""Re-score the current champion (the export in ``registry.export_dir``) on the newest bars,
before anything is retrained: how the model in production did on bars it never trained on."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import task

from sentio_core import backtest, env, export, io, market, registry, stages
from sentio_core.data import BarFrequency
from tasks.common import StageKey, StageOutput

KEY = StageKey("rescore", ("registry",), (stages, backtest, env, market, export, io, sys.modules[__name__]))


def _champion(cfg) -> Path:
    return Path(cfg.registry.export_dir) / f"{cfg.registry.model_name}.pth"


def _key(context, parameters) -> str:
    """The data and the champion's weights: a new champion or new bars re-score."""
    cfg, pth = parameters["cfg"], _champion(parameters["cfg"])
    champion = io.file_sha256(pth) if pth.exists() else "none"
    return KEY.checked(cfg, KEY.compute(cfg, *[v for k, v in parameters.items() if k != "cfg"], champion))


def _skipped(out: Path, status: str, line: str) -> StageOutput:
    io.write_json({"status": status}, out)
    return StageOutput("rescore", str(out), io.file_sha256(out), {"status": status, "summary_line": line})


def _line(result: dict) -> str:
    m = result["metrics"]["champion"]
    text = (f"- {result['bars']} bars {result['first'][:10]} .. {result['last'][:10]} (its test window and after): "
            f"Sharpe {m['sharpe']:.2f}, return {m['total_return']:.1%}, max drawdown {m['max_drawdown']:.1%}, "
            f"overrides {int(m['overrides'])}; buy-and-hold underlying Sharpe "
            f"{result['metrics']['buy_hold_underlying']['sharpe']:.2f}")
    if result["since_test"] is not None:
        s = result["since_test"]
        text += f"\n- {result['new_bars']} bars after its test window: return {s['total_return']:.1%}, Sharpe {s['sharpe']:.2f}"
    return text


@task(name="rescore-champion", cache_key_fn=_key, persist_result=True, retries=2, retry_delay_seconds=5)
def rescore(cfg, manifest: StageOutput, panel: StageOutput, features: StageOutput) -> StageOutput:
    """Score the exported champion, if any, from its test window to the newest bar; log to MLflow."""
    pth = _champion(cfg)
    champion = io.file_sha256(pth) if pth.exists() else "none"
    out = KEY.output(cfg, "json", manifest, panel, features, champion)
    if not pth.exists():
        return _skipped(out, "no champion", f"- no champion exported yet ({pth})")
    policy = export.load_policy(pth)
    if "regime_model" not in policy.metadata:
        return _skipped(out, "skipped", f"- {pth} predates re-scoring metadata; not re-scored")
    result = stages.rescore(cfg, io.read_parquet(panel.require()), io.read_parquet(features.require()),
                            BarFrequency(**panel.meta["frequency"]), policy)
    io.write_json(result, out)
    tags = {"kind": "champion-rescore", "model_version": str(policy.metadata.get("registry_version")),
            "first": result["first"], "last": result["last"]}
    metrics = {f"{k}.{m}": v for k, ms in result["metrics"].items() for m, v in ms.items()}
    if result["since_test"] is not None:
        metrics.update({f"since_test.{m}": v for m, v in result["since_test"].items()})
    rid = registry.log_run(cfg.registry, "champion-rescore", metrics, tags)
    return StageOutput("rescore", str(out), io.file_sha256(out),
                       {"status": "scored", "summary_line": _line(result), "mlflow_run_id": rid,
                        "sharpe": result["metrics"]["champion"]["sharpe"], "bars": result["bars"]})
