"""Typed run configuration: one schema, YAML values, ``--set key=value`` overrides.

Every knob has one home: either a default here or a value in ``configs/*.yaml``.
Unknown keys are rejected and every error names the full key path (``folds.test_bars``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "base.yaml"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    path: Path = Field(description="Folder of per-symbol files (TQQQ.csv, QQQ.parquet, ...) or one file with a `symbol` column.")
    timezone: str = Field("America/New_York", description="Exchange time zone; naive timestamps are read in it.")
    calendar: str = Field("XNYS", description="exchange_calendars name used for session-aware checks and minutes to the close.")


class UniverseConfig(_Section):
    underlying: str = "QQQ"
    long: str | None = "TQQQ"
    short: str | None = "SQQQ"
    leverage: float = Field(3.0, gt=0, description="Leverage of the long leg; the short leg is -leverage.")

    @property
    def symbols(self) -> list[str]:
        """Symbols to load: underlying first, then the legs that are set (unique, ordered)."""
        out: list[str] = []
        for sym in (self.underlying, self.long, self.short):
            if sym is not None and sym not in out:
                out.append(sym)
        return out


class ValidationConfig(_Section):
    min_rows: int = Field(250, ge=1, description="Minimum number of bars per file.")
    max_missing_sessions: int = Field(0, ge=0, description="Exchange sessions that may be missing between two consecutive bars.")
    max_missing_intraday_bars: int = Field(0, ge=0, description="Bars that may be missing inside one session (intraday data).")
    report_rows: int = Field(5, ge=1, description="Offending rows printed per failed rule.")


class FeatureConfig(_Section):
    return_horizons: list[int] = Field(default_factory=lambda: [1, 5, 20, 60])
    vol_windows: list[int] = Field(default_factory=lambda: [20, 60])
    ewma_halflife_bars: float = Field(10.0, gt=0)
    rsi_bars: int = Field(14, ge=2)
    macd_fast_bars: int = Field(12, ge=1)
    macd_slow_bars: int = Field(26, ge=2)
    macd_signal_bars: int = Field(9, ge=1)
    bollinger_bars: int = Field(20, ge=2)
    bollinger_k: float = Field(2.0, gt=0)
    atr_bars: int = Field(14, ge=2)
    stoch_bars: int = Field(14, ge=2)
    stoch_smooth_bars: int = Field(3, ge=1)
    volume_z_bars: int = Field(20, ge=2)
    obv_slope_bars: int = Field(20, ge=2)
    moments_bars: int = Field(60, ge=4, description="Window of rolling skew, kurtosis and lag-1 autocorrelation.")
    trend_bars: int = Field(50, ge=2)
    cross_bars: int = Field(20, ge=2, description="Window of the leveraged-vs-underlying tracking features.")
    corr_bars: int = Field(60, ge=3)
    higher_timeframe: Literal["auto", "none", "1w", "1mo", "1d"] = Field(
        "auto", description="Period of the higher-timeframe bars: auto = 1w for daily bars, 1d (sessions) for intraday."
    )
    htf_rsi_bars: int = Field(14, ge=2)
    htf_vol_bars: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _macd_order(self) -> "FeatureConfig":
        if self.macd_fast_bars >= self.macd_slow_bars:
            raise ValueError(f"macd_fast_bars ({self.macd_fast_bars}) must be below macd_slow_bars ({self.macd_slow_bars})")
        return self


class RegimeConfig(_Section):
    backend: Literal["markov", "hmm"] = Field("markov", description="statsmodels MarkovRegression or hmmlearn GaussianHMM.")
    n_regimes: int = Field(3, ge=2, le=5)
    n_starts: int = Field(3, ge=1, description="Random starts; the best log-likelihood is kept.")
    max_iter: int = Field(200, ge=10)


class FoldConfig(_Section):
    n_folds: int = Field(5, ge=1)
    test_bars: int = Field(250, ge=1)
    scheme: Literal["expanding", "rolling"] = "expanding"
    train_bars: int | None = Field(None, ge=1, description="Training window length for the rolling scheme.")
    min_train_bars: int = Field(500, ge=1)
    purge_bars: int | None = Field(None, ge=0, description="Bars dropped between train and test; null = lookback + reward horizon.")
    embargo_bars: int = Field(0, ge=0, description="Bars after each test window that belong to no test window.")


class EnvConfig(_Section):
    lookback_bars: int = Field(30, ge=1, description="Bars of features the agent sees at each decision.")
    reward_horizon_bars: int = Field(1, ge=1, description="Bars over which one decision's reward is realised.")


class CostConfig(_Section):
    """Cost model (see sentio_core/costs.py); every economically meaningful knob is required."""

    commission_mode: Literal["per_share", "bps"]
    commission_per_share_usd: float = Field(ge=0)
    commission_min_usd: float = Field(ge=0)
    commission_bps: float = Field(ge=0)
    half_spread_bps: dict[str, float] = Field(description="Per symbol; the key 'default' covers the others.")
    impact_coef: float = Field(ge=0, description="Y in impact = Y x sigma x sqrt(participation) x notional.")

    def spread_bps(self, symbol: str) -> float:
        if symbol in self.half_spread_bps:
            return self.half_spread_bps[symbol]
        if "default" in self.half_spread_bps:
            return self.half_spread_bps["default"]
        raise KeyError(f"costs.half_spread_bps has no entry for {symbol} and no 'default'")


class RunConfig(_Section):
    work_dir: Path = Field(Path(".sentio/work"), description="Where stage outputs are written (content-addressed).")


class Config(_Section):
    seed: int = Field(7, ge=0)
    data: DataConfig
    universe: UniverseConfig = UniverseConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    regimes: RegimeConfig = RegimeConfig()
    folds: FoldConfig = FoldConfig()
    env: EnvConfig = EnvConfig()
    costs: CostConfig
    run: RunConfig = RunConfig()

    @property
    def purge_bars(self) -> int:
        """Effective purge: the configured value, or lookback + reward horizon."""
        if self.folds.purge_bars is not None:
            return self.folds.purge_bars
        return self.env.lookback_bars + self.env.reward_horizon_bars

    @model_validator(mode="after")
    def _check_cross_section(self) -> "Config":
        minimum = self.env.lookback_bars + self.env.reward_horizon_bars
        if self.folds.purge_bars is not None and self.folds.purge_bars < minimum:
            raise ValueError(
                f"folds.purge_bars ({self.folds.purge_bars}) must be at least env.lookback_bars + "
                f"env.reward_horizon_bars ({minimum}); raise it or set it to null"
            )
        if self.folds.scheme == "rolling" and self.folds.train_bars is None:
            raise ValueError("folds.scheme 'rolling' needs folds.train_bars; set it or use scheme 'expanding'")
        return self

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (``"features"``, ``"folds"``, ...), for cache keys."""
        dumped = self.model_dump(mode="json")
        payload = {name: dumped[name] for name in sections}
        return stable_hash(payload)


def stable_hash(obj: Any) -> str:
    """SHA-256 (first 16 hex) of a JSON-serialisable object with sorted keys."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML scalar (``null``, numbers, booleans work)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not key=value (for example --set folds.n_folds=3)")
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
    return path, value


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, resolving ``extends: other.yaml`` (relative to the file) recursively."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    parent = doc.pop("extends", None)
    if parent is None:
        return doc
    return _deep_merge(_read_yaml(path.parent / parent, seen + (path,)), doc)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(doc: dict[str, Any], path: list[str], value: Any) -> None:
    node = doc
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{'.'.join(path[: depth + 1])}' is a value, not a section")
        node = child
    node[path[-1]] = value


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/base.yaml for the known keys)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (default ``configs/base.yaml``), apply ``key=value`` overrides, validate.

    :param path: YAML file; may name a parent with ``extends:``.
    :param overrides: ``a.b=value`` strings, values parsed as YAML scalars.
    :raises ConfigError: with every offending key path named.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    doc = _read_yaml(cfg_path)
    for item in overrides:
        key_path, value = parse_override(item)
        _set_path(doc, key_path, value)
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        source = str(cfg_path) + (f" with --set {' '.join(overrides)}" if overrides else "")
        raise ConfigError(_format_errors(exc, source)) from None


def flatten(cfg: Config) -> dict[str, str]:
    """Flattened ``section.key -> value`` strings (for MLflow params and reports)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list) else str(node)

    walk("", cfg.model_dump(mode="json"))
    return out
