"""``sentio``: validate data, build features, list folds, run the retraining flow.

Every command takes ``--config FILE`` and repeatable ``--set key=value``. Exit codes: 0 success,
1 bad data (validation or a data rule), 2 bad usage or configuration, 3 a failed run.
Errors are one clear message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sentio_core.config import ConfigError, load_config
from sentio_core.folds import FoldError
from sentio_core.io import DataError

EXIT_DATA, EXIT_USAGE, EXIT_RUN = 1, 2, 3
FOLD_KEYS = ("fold", "train_start", "train_end", "test_start", "test_end", "train_bars", "test_bars",
             "purge_bars", "embargo_bars")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="config YAML (default: configs/base.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set folds.n_folds=3 (repeatable; YAML scalars)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check bar files against the validation rules")
    p.add_argument("paths", nargs="+", help="files or folders of bar files")
    _common(p)

    p = sub.add_parser("features", help="build the feature table and write it as Parquet")
    p.add_argument("--out", required=True, help="output .parquet file")
    _common(p)

    p = sub.add_parser("folds", help="print the purged walk-forward folds")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    _common(p)

    p = sub.add_parser("run", help="run the sentio-retrain Prefect flow (embedded Prefect, no server)")
    p.add_argument("--refresh", action="store_true", help="recompute every stage instead of using the cache")
    _common(p)
    return parser


def _err(msg: str) -> None:
    print(f"sentio: {msg}", file=sys.stderr)


def _prepare_data(cfg):
    """Validate the configured data, then build the panel; raises DataError with the report."""
    from sentio_core import stages

    man = stages.manifest(cfg)
    report = stages.validate(cfg, man)
    if not report.ok:
        print(report.to_text(), file=sys.stderr)
        raise DataError(cfg.data.path, "validation", "the data failed validation (report above)")
    bars, alignment, freq = stages.panel(cfg, man)
    for line in alignment.lines():
        print(line, file=sys.stderr)
    return bars, freq


def cmd_validate(args, cfg) -> int:
    from sentio_core.validation import validate_paths

    report = validate_paths(args.paths, cfg.validation, cfg.data.calendar, cfg.data.timezone)
    print(report.to_text())
    return 0 if report.ok else EXIT_DATA


def cmd_features(args, cfg) -> int:
    from sentio_core import io, stages

    out = Path(args.out)
    if out.suffix.lower() != ".parquet":
        _err(f"--out {out}: the feature table is written as Parquet; name it *.parquet")
        return EXIT_USAGE
    bars, freq = _prepare_data(cfg)
    table = stages.features(cfg, bars, freq)
    io.write_parquet(table, out)
    print(f"wrote {out}: {table.height} rows x {table.width - 1} features", file=sys.stderr)
    return 0


def cmd_folds(args, cfg) -> int:
    from sentio_core import stages
    from tasks.report import format_table

    bars, freq = _prepare_data(cfg)
    spans = [s.to_dict() for s in stages.folds(cfg, stages.features(cfg, bars, freq))]
    rows = [{k: s[k] for k in FOLD_KEYS} for s in spans]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _prefect_env() -> None:
    """Embedded Prefect: no server, state under PREFECT_HOME (default .sentio/prefect), quiet telemetry."""
    os.environ.setdefault("PREFECT_HOME", str(Path(".sentio/prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if not os.environ.get("SENTIO_DEBUG"):
        # the CLI prints one clear error itself; Prefect's run loggers would add tracebacks
        for name in ("FLOW_RUNS", "TASK_RUNS"):
            os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_PREFECT_{name}_LEVEL", "CRITICAL")


def cmd_run(args, cfg) -> int:
    _prefect_env()
    from flows.retrain import sentio_retrain
    from tasks.report import format_table

    config_path = args.config or str(Path(__file__).resolve().parents[1] / "configs" / "base.yaml")
    start = time.perf_counter()
    state = sentio_retrain(config=config_path, overrides=args.overrides, refresh=args.refresh, return_state=True)
    elapsed = time.perf_counter() - start
    if not state.is_completed():
        try:
            state.result()
        except Exception as exc:  # the flow's own error, reported without a traceback
            _err(f"run failed after {elapsed:.1f}s: {type(exc).__name__}: {exc}")
            return EXIT_DATA if type(exc).__name__ == "DataValidationError" else EXIT_RUN
    result = state.result()
    for line in result["alignment"]:
        print(line)
    print("stages: " + ", ".join(f"{k}={v}" for k, v in result["stages"].items()))
    print(f"features: {result['n_features']}")
    print(format_table(result["folds"]))
    print(f"run finished in {elapsed:.1f}s")
    return 0


COMMANDS = {"validate": cmd_validate, "features": cmd_features, "folds": cmd_folds, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        return COMMANDS[args.command](args, cfg)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except FoldError as exc:
        _err(f"folds: {exc}")
        return EXIT_USAGE
    except DataError as exc:
        _err(str(exc))
        return EXIT_DATA


if __name__ == "__main__":
    raise SystemExit(main())
