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

from sentio_core import algorithms
from sentio_core.config import (
    ConfigError,
    check_feature_patterns,
    load_config,
    preflight,
)
from sentio_core.files import DataError
from sentio_core.folds import FoldError

EXIT_DATA, EXIT_USAGE, EXIT_RUN = 1, 2, 3


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="config YAML (default: configs/base.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set folds.n_folds=3 (repeatable; YAML scalars)")


TRANSFORMER_PPO = "transformer_ppo"  # the original package's model type: MaskablePPO with the transformer policy
# (flags, argparse kwargs) of `sentio train`'s model options; dest is the train.* key each sets
MODEL_FLAGS: list[tuple[tuple[str, ...], dict]] = [
    (("--use-transformer",), {"dest": "policy", "action": "store_const", "const": "transformer",
                              "help": "transformer over bars (train.policy: transformer; default mlp)"}),
    (("--transformer-layers",), {"dest": "transformer_layers", "type": int, "help": "encoder layers (default 2)"}),
    (("--transformer-heads",), {"dest": "transformer_heads", "type": int, "help": "attention heads (default 4)"}),
    (("--d-model",), {"dest": "d_model", "type": int, "help": "token width (default 32)"}),
    (("--use-distributional-critic",), {"dest": "critic", "action": "store_const", "const": "quantile",
                                        "help": "quantile critic (train.critic: quantile; default scalar)"}),
    (("--n-quantiles",), {"dest": "n_quantiles", "type": int, "help": "quantiles of the distributional critic (default 51)"}),
    (("--cvar-alpha",), {"dest": "cvar_alpha", "type": float, "help": "tail probability of the CVaR objective (default 0.05)"}),
    (("--cvar-weight",), {"dest": "cvar_weight", "type": float,
                          "help": "weight of the CVaR tail term in the advantage (default 0: off; needs the distributional critic)"}),
    (("--use-regime-gating",), {"dest": "regime_gating", "action": "store_const", "const": True,
                                "help": "actor heads mixed by the filtered regime probabilities"}),
    (("--adaptive-kl",), {"dest": "adaptive_kl", "action": "store_const", "const": True,
                          "help": "adaptive KL penalty around train.kl_target"}),
]
MODEL_KEYS = {"lr": "learning_rate", **{kw["dest"]: kw["dest"] for _, kw in MODEL_FLAGS}}


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

    p = sub.add_parser("train", help="train one policy on the latest fold; write PATH.pth and PATH-metadata.json")
    p.add_argument("--model-type", choices=[*algorithms.NAMES, TRANSFORMER_PPO], default=algorithms.PRIMARY,
                   help=f"the algorithm (default {algorithms.PRIMARY}; {algorithms.BASELINE} is the baseline; "
                        f"{TRANSFORMER_PPO} = {algorithms.PRIMARY} with --use-transformer)")
    p.add_argument("--timesteps", type=int, default=None, help="budget in environment steps")
    p.add_argument("--episodes", type=int, default=None, help="budget in finished episodes")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (not reproducible when it binds)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default train.learning_rate)")
    p.add_argument("--output", default=None, help="output stem (default trained_models/MODEL_TYPE)")
    m = p.add_argument_group("model (the original package's flags, on Sentio's defaults; each sets a train.* key)")
    for flags, kwargs in MODEL_FLAGS:
        m.add_argument(*flags, **kwargs)
    _common(p)

    p = sub.add_parser("run", help="run the sentio-retrain Prefect flow (embedded Prefect, no server)")
    p.add_argument("--refresh", action="store_true", help="recompute every stage instead of using the cache")
    _common(p)

    p = sub.add_parser("decide", help="one decision of an exported policy on the latest bars: print it as JSON")
    p.add_argument("--model", required=True, help="the export (PATH.pth or its stem), e.g. trained_models/sentio-maskable-ppo")
    p.add_argument("--data", required=True, help="folder (or file) of bars of every symbol the policy reads")
    p.add_argument("--portfolio", required=True, help="JSON: cash, shares per leg, peak, level, held, cooldown")
    _common(p)

    p = sub.add_parser("serve", help="the decision API over HTTP on 127.0.0.1: POST /decide, POST /session, POST /session/decide, "
                                     "GET /health, GET /model; "
                                     "reloads the champion export when it changes")
    p.add_argument("--model", default=None, help="the export's stem (default registry.export_dir/registry.model_name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _common(p)

    p = sub.add_parser("promote", help="point the champion alias at VERSION by hand (a promotion or a roll-back) and "
                                       "export it; recorded in MLflow with who asked and why")
    p.add_argument("version", help="the registered model version (registry.model_name)")
    p.add_argument("--reason", required=True, help="why (kept on the version and in a manual-promotion run)")
    p.add_argument("--by", default=None, help="who asks (default: the login name)")
    _common(p)
    return parser


def _err(msg: str) -> None:
    print(f"sentio: {msg}", file=sys.stderr)


def _prepare_data(cfg):
    """Validate the configured data, then build the panel; raises DataValidationError with the report."""
    from sentio_core.data import build_manifest, build_panel
    from sentio_core.validation import DataValidationError, validate_manifest

    manifest = build_manifest(cfg)
    report = validate_manifest(cfg, manifest)
    if not report.ok:
        raise DataValidationError(report, cfg.data.path)
    bars, alignment, freq = build_panel(cfg, manifest)
    for line in alignment.lines():
        print(line, file=sys.stderr)
    preflight(cfg, alignment.common_rows, freq.bars_per_session)
    return manifest, bars, freq


def _features(cfg, bars, freq):
    """The feature table, and the pre-flight check of the observed feature patterns against it."""
    from sentio_core.features import feature_columns, feature_table

    table = feature_table(cfg, bars, freq)
    check_feature_patterns(cfg, feature_columns(table))
    return table


def cmd_validate(args, cfg) -> int:
    from sentio_core.validation import validate_paths

    report = validate_paths(args.paths, cfg.validation, cfg.data.calendar, cfg.data.timezone)
    print(report.to_text())
    return 0 if report.ok else EXIT_DATA


def cmd_features(args, cfg) -> int:
    from sentio_core import files

    out = Path(args.out)
    if out.suffix.lower() != ".parquet":
        _err(f"--out {out}: the feature table is written as Parquet; name it *.parquet")
        return EXIT_USAGE
    _, bars, freq = _prepare_data(cfg)
    table = _features(cfg, bars, freq)
    files.write_parquet(table, out)
    print(f"wrote {out}: {table.height} rows x {table.width - 1} features", file=sys.stderr)
    return 0


def cmd_folds(args, cfg) -> int:
    from sentio_core.folds import fold_spans
    from sentio_core.report import format_table

    _, bars, freq = _prepare_data(cfg)
    rows = [s.summary() for s in fold_spans(cfg, _features(cfg, bars, freq))]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def cmd_train(args, cfg) -> int:
    """Train on the latest fold's training window, backtest on its test window, export."""
    from pydantic import ValidationError

    from sentio_core.backtest import fold_backtest, sb3_policy
    from sentio_core.codeversion import project_version
    from sentio_core.config import TrainConfig
    from sentio_core.export import policy_header, save_policy
    from sentio_core.folds import fold_spans
    from sentio_core.market import fold_market, policy_spec
    from sentio_core.metadata import (
        DataProvenance,
        FoldResult,
        OutOfSample,
        build_metadata,
    )
    from sentio_core.policies import reads_masks
    from sentio_core.regimes import fold_regimes
    from sentio_core.report import format_table, strategy_rows
    from sentio_core.train import Budget, BudgetError, fold_training, training_summary

    updates = {key: getattr(args, dest) for dest, key in MODEL_KEYS.items() if getattr(args, dest) is not None}
    if args.model_type == TRANSFORMER_PPO:
        args.model_type, updates["policy"] = algorithms.PRIMARY, "transformer"
    if updates:  # the flags replace their train.* keys, under the schema's rules for them
        try:
            cfg = cfg.model_copy(update={"train": TrainConfig.model_validate(cfg.train.model_dump() | updates)})
        except ValidationError as exc:
            first = exc.errors()[0]
            key = str(first["loc"][0]) if first["loc"] else None
            msg = first["msg"].removeprefix("Value error, ")
            if key in updates:  # one flag's value breaks its key's rule
                flag = {k: dest for dest, k in MODEL_KEYS.items()}[key].replace("_", "-")
                _err(f"--{flag}: {msg.lower()} (got {updates[key]})")
            else:  # the flags together break a rule across keys
                _err(f"{msg} (train settings from the flags: {updates})")
            return EXIT_USAGE
    flags = {"timesteps": args.timesteps, "episodes": args.episodes, "minutes": args.minutes}
    try:  # budget flags replace the config's budget (the first of them reached stops training)
        budget = Budget(**flags) if any(v is not None for v in flags.values()) else Budget.from_config(cfg)
    except BudgetError as exc:
        _err("; ".join(f"--{name}: {msg}" if name else msg for name, msg in exc.problems))
        return EXIT_USAGE
    manifest, bars, freq = _prepare_data(cfg)
    feats = _features(cfg, bars, freq)
    span = fold_spans(cfg, feats)[-1]
    print(f"fold {span.fold}: train {span.train_start[:10]}..{span.train_end[:10]}, "
          f"test {span.test_start[:10]}..{span.test_end[:10]}", file=sys.stderr)
    regimes = fold_regimes(cfg, bars, span)
    market = fold_market(cfg, bars, feats, regimes.probabilities, span, freq.periods_per_year)

    from tqdm import tqdm

    total = budget.timesteps * cfg.train.seeds if budget.timesteps is not None else None
    bar = tqdm(total=total, desc=args.model_type, unit="step", file=sys.stderr, disable=not sys.stderr.isatty())

    def progress(steps: int, episodes: int) -> None:
        bar.update(steps - bar.n)
        bar.set_postfix(episodes=episodes)

    training = fold_training(cfg, market, span, args.model_type, budget, on_progress=progress)
    bar.close()
    for k, run in enumerate(training.runs):
        kept = ("" if run.validation_sharpe is None else
                f"; kept the checkpoint at {run.kept_timesteps} steps, validation Sharpe {run.validation_sharpe:.2f}")
        print(f"seed {run.seed}: trained {run.timesteps} steps / {run.episodes} episodes in {run.seconds:.1f}s on "
              f"{run.device} (stopped by {run.stopped_by}){kept}{' <- chosen' if k == training.chosen else ''}",
              file=sys.stderr)
    result = training.result
    masked = reads_masks(args.model_type)
    paths = fold_backtest(cfg, market, span, {args.model_type: (sb3_policy(result.model, masked), masked)})
    metrics = {name: p.metrics(market.periods_per_year) for name, p in paths.items()}
    evidence = OutOfSample(folds=[FoldResult(fold=span.fold, test_start=span.test_start, test_end=span.test_end,
                                             metrics=metrics)])
    data = DataProvenance(fingerprint=manifest.fingerprint(), files=[f.model_dump() for f in manifest.files],
                          first_train=span.train_start, last_test=span.test_end)
    metadata = build_metadata(policy_header(result.model, args.model_type), policy_spec(cfg, market, span),
                              regimes.model.to_dict(), training_summary(cfg, training, span.fold, budget, market),
                              cfg, project_version(), evidence, data)
    stem = args.output or str(Path(cfg.registry.export_dir) / args.model_type)
    pth, meta_path = save_policy(result.model, args.model_type, stem, metadata)
    print(format_table(strategy_rows(metrics)))
    print(f"wrote {pth} and {meta_path}")
    return 0


def _prefect_env() -> None:
    """Embedded Prefect: no server, state under PREFECT_HOME (default .sentio/prefect), quiet telemetry."""
    os.environ.setdefault("PREFECT_HOME", str(Path(".sentio/prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not os.environ.get("SENTIO_DEBUG"):
        import logging
        import warnings

        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # registration chatter; results are printed below
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # a broken tracking store (read-only, locked) is reported in one line below, not as SQL logs
        logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module="mlflow")
        # the CLI prints one clear error itself; Prefect's run loggers would add tracebacks
        for name in ("FLOW_RUNS", "TASK_RUNS"):
            os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_PREFECT_{name}_LEVEL", "CRITICAL")


SERVER_APP = "prefect.server.api.server:create_app"  # what Prefect's embedded API server runs
RUN_MARKER = "SENTIO_RUN"  # "<pid>:<start time>" of the sentio run that started an embedded server


def _marker() -> str:
    import psutil

    return f"{os.getpid()}:{psutil.Process().create_time():.3f}"


def _run_gone(marker: str) -> bool:
    """Whether the ``sentio run`` named by a marker has ended (its pid is gone or is another process)."""
    import psutil

    pid, _, started = marker.partition(":")
    try:
        return not pid.isdigit() or f"{psutil.Process(int(pid)).create_time():.3f}" != started
    except psutil.NoSuchProcess:
        return True


def reap_orphaned_servers(prefect_home: str | Path) -> list[int]:
    """Stop embedded Prefect API servers that a killed ``sentio run`` left behind: Prefect's
    ephemeral server (``PREFECT__SERVER_EPHEMERAL=1``) started by a ``sentio run`` (its
    ``SENTIO_RUN`` marker: pid and start time) that has ended, with this ``PREFECT_HOME``. A server
    of a live run, a ``prefect server start`` of the user's, or one of another home is never touched.

    :returns: the pids stopped.
    """
    import psutil

    home, reaped = str(Path(prefect_home).resolve()), []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if SERVER_APP not in (proc.info["cmdline"] or []):
                continue
            env = proc.environ()
            marker = env.get(RUN_MARKER)
            if env.get("PREFECT__SERVER_EPHEMERAL") != "1" or not marker or not _run_gone(marker):
                continue
            if str(Path(env.get("PREFECT_HOME", "~/.prefect")).expanduser().resolve()) != home:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except psutil.TimeoutExpired:
                proc.kill()
            reaped.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return reaped


def cmd_run(args, cfg) -> int:
    from sentio_core.report import format_table, gate_rows, summary_rows

    config_path = args.config or str(Path(__file__).resolve().parents[1] / "configs" / "base.yaml")
    start = time.perf_counter()
    try:
        _prefect_env()
        reap_orphaned_servers(os.environ["PREFECT_HOME"])  # a killed run's embedded server, if any
        os.environ[RUN_MARKER] = _marker()  # inherited by the embedded server this run starts
        from flows.retrain import (
            sentio_retrain,  # imports Prefect, which reads its settings
        )

        state = sentio_retrain(config=config_path, overrides=args.overrides, refresh=args.refresh, return_state=True)
    except Exception as exc:  # the run could not start: Prefect's embedded server or its state folder
        _err(f"run could not start: {type(exc).__name__}: {_one_line(exc)} (PREFECT_HOME={os.environ.get('PREFECT_HOME')})")
        return EXIT_RUN
    elapsed = time.perf_counter() - start
    if not state.is_completed():
        try:
            state.result()
        except DataError as exc:  # the validation gate (or a data rule) stopped the run
            _err(f"run failed after {elapsed:.1f}s: {type(exc).__name__}: {exc}")
            return EXIT_DATA
        except ConfigError as exc:  # the pre-flight check: settings that leave no usable row
            _err(f"run stopped before the features: {exc}")
            return EXIT_USAGE
        except Exception as exc:  # the flow's own error, reported without a traceback
            _err(f"run failed after {elapsed:.1f}s: {type(exc).__name__}: {_one_line(exc)}")
            return EXIT_RUN
    result = state.result()
    for line in result.alignment:
        print(line)
    counts: dict[str, int] = {}
    for state_name in result.stages.values():
        counts[state_name] = counts.get(state_name, 0) + 1
    print(f"stages: {len(result.stages)} ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})")
    print(f"features: {result.n_features}")
    print(format_table(summary_rows(result.folds)))
    reg = result.registration
    if result.cpcv is not None:  # a combinatorial evaluation: the paths, nothing registered
        c = result.cpcv
        print(f"cpcv: {c.splits} splits, {c.paths} backtest paths; annualised Sharpe of each path "
              f"(research evaluation: nothing registered, {c.n_trials_logged} trials logged)")
        print(format_table([{"strategy": name, **{k: f"{v:.0f}" if k == "paths" else f"{v:.2f}" for k, v in s.items()}}
                            for name, s in c.summary.items()]))
    if reg is not None:
        print(f"promotion: {reg.alias} (model {reg.version}); {reg.n_trials} trials in the ledger")
        print(format_table(gate_rows(reg.gate.checks)))
        for check in reg.gate.checks:
            print(f"  {check.name}: {check.detail}")
        if reg.export:
            print("exported: " + ", ".join(reg.export))
    print(f"run finished in {elapsed:.1f}s")
    return 0


def cmd_decide(args, cfg) -> int:
    from sentio_core.data import load_panel
    from sentio_core.decision import Decider, DecisionError, read_portfolio

    try:
        portfolio = read_portfolio(args.portfolio)
    except DecisionError as exc:
        _err(f"decide: {exc}")
        return EXIT_USAGE
    decider = Decider(args.model)
    bars, _ = load_panel(args.data, decider.symbols, decider.cfg.data.timezone)
    try:
        decision = decider.decide(bars, portfolio)
    except DecisionError as exc:
        _err(f"decide: {exc}")
        return EXIT_USAGE if str(exc).startswith("portfolio") else EXIT_DATA
    print(json.dumps(decision.to_dict()))
    return 0


def cmd_serve(args, cfg) -> int:
    from sentio.service import serve

    stem = args.model or str(Path(cfg.registry.export_dir) / cfg.registry.model_name)
    print(f"serving {stem} on http://{args.host}:{args.port} (POST /decide, POST /session, POST /session/decide, "
          "GET /health, GET /model)", file=sys.stderr)
    serve(stem, args.host, args.port)
    return 0


def cmd_promote(args, cfg) -> int:
    import getpass

    from sentio_core import registry

    try:
        done = registry.promote(cfg.registry, args.version, by=args.by or getpass.getuser(), reason=args.reason)
    except ValueError as exc:
        _err(f"promote: {exc}")
        return EXIT_USAGE
    print(f"{done['model']} version {done['version']} is the champion (was {done['previous']}); exported to "
          f"{done['export']}.pth; promoted by {done['by']} at {done['at']}, MLflow run {done['run_id']}")
    return 0


COMMANDS = {"validate": cmd_validate, "features": cmd_features, "folds": cmd_folds, "train": cmd_train, "run": cmd_run,
            "promote": cmd_promote, "decide": cmd_decide, "serve": cmd_serve}


def _one_line(exc: BaseException) -> str:
    """An error's first line, at most 400 characters (library errors can carry pages of SQL or HTML)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]


def _check_output(flag: str, path: Path) -> str | None:
    """Why ``path`` cannot be written (an ancestor is a file, or the nearest folder is not writable), or None."""
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                return f"{flag} {path}: {parent} is a file, not a folder"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{flag} {path}: the folder {parent} is not writable"
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--out", getattr(args, "out", None)), ("--output", getattr(args, "output", None))):
        problem = value and _check_output(flag, Path(value))
        if problem:  # an argument that cannot work: said before anything runs
            _err(problem)
            return EXIT_USAGE
    try:
        cfg = load_config(args.config, args.overrides)
        return COMMANDS[args.command](args, cfg)
    except OSError as exc:  # the machine, not the data or the settings: a full disk, a read-only folder
        where = f"{exc.filename}: " if exc.filename else ""
        _err(f"{where}{exc.strerror or _one_line(exc)} ({type(exc).__name__})")
        return EXIT_RUN
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except FoldError as exc:
        _err(f"folds: {exc}")
        return EXIT_USAGE
    except DataError as exc:
        _err(str(exc))
        return EXIT_DATA
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM turned into an exit
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            raise
        _err(f"interrupted ({type(exc).__name__})")
        return EXIT_RUN
    except Exception as exc:  # anything else: one line (SENTIO_DEBUG=1 shows the traceback)
        if os.environ.get("SENTIO_DEBUG"):
            raise
        _err(f"failed: {type(exc).__name__}: {_one_line(exc)}")
        return EXIT_RUN
    except BaseException as exc:  # Prefect's TerminationSignal (SIGTERM during a run)
        if type(exc).__name__ != "TerminationSignal":
            raise
        _err("interrupted (SIGTERM)")
        return EXIT_RUN


if __name__ == "__main__":
    raise SystemExit(main())
