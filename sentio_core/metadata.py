"""The metadata of an exported policy (``STEM-metadata.json``), as typed records.

:func:`build_metadata` is the one builder: ``sentio train``, the training stage (no out-of-sample
results or data provenance yet) and the registration stage (all of it) call it, so an export from
any of them is re-scored and served the same way. ``FORMAT`` is the version of the export (weights
header and metadata); the loader refuses the formats in ``PREVIOUS_FORMATS`` with what to do.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from sentio_core.config import Config, stable_hash

FORMAT = "sentio-policy/3"
PREVIOUS_FORMATS = {"sentio-policy/1": "written before the export metadata had a schema",
                    "sentio-policy/2": "written before exports carried a content hash"}
HEADER_KEYS = ("format", "algorithm", "obs_dim", "n_actions", "net_arch", "model")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Normalisation(_Record):
    """Feature z-scoring of the observation, fitted on the training window ``fitted_on``."""

    mean: list[float]
    std: list[float]
    clip: float
    fitted_on: tuple[str, str]


class ObservationSpec(_Record):
    """How the observation is laid out: ``lookback_bars`` rows of ``features`` (oldest first), then
    ``state`` (:class:`sentio_core.env.ObservationLayout`).

    :param feature_max_corr: the de-duplication threshold (``env.feature_max_corr``) the features
        were chosen with on the training window; None when none was applied.
    :param dropped_features: the selected features it dropped, each -> the kept feature it
        duplicates, or ``"constant"``.
    """

    lookback_bars: int
    features: list[str]
    layout: str
    state: list[str]
    normalisation: Normalisation
    feature_max_corr: float | None = None
    dropped_features: dict[str, str] = {}


class LegSpec(_Record):
    symbol: str
    direction: int
    # the largest one-bar fall and rise, close to close, in the training rows (the worst-bar gap
    # rule's moves: a live decision must use these, not its window's); None in older exports
    worst_drop: float | None = None
    worst_rise: float | None = None


class PolicySpec(_Record):
    """What a user of the policy needs to build its inputs and read its outputs."""

    action_meanings: list[str]
    exposure_levels: list[float]
    observation: ObservationSpec
    legs: list[LegSpec]
    fold: int
    train_window: tuple[str, str]
    test_window: tuple[str, str]


class SeedSummary(_Record):
    """One seed's training of a fold and algorithm: its length, its stop, and on the validation slice
    the kept checkpoint and the whole curve ``(timesteps, Sharpe)``."""

    seed: int
    timesteps: int
    seconds: float
    stopped_by: str
    kept_timesteps: int | None = None
    validation_sharpe: float | None = None
    validation_curve: list[tuple[int, float]] = []


class TrainingSummary(_Record):
    """A fold and algorithm's training: the chosen seed's run (``timesteps`` .. ``device``), the
    seconds of all seeds, and each seed's summary (the spread)."""

    fold: int
    algorithm: str
    timesteps: int
    episodes: int
    seconds: float
    stopped_by: str
    device: str
    learning_rate: float
    budget: dict[str, float]
    seed: int | None = None
    kept_timesteps: int | None = None  # None: no validation slice, the last weights were kept
    validation_sharpe: float | None = None
    validation_window: tuple[str, str] | None = None  # first and last bar of the inner validation slice
    seeds: list[SeedSummary] = []
    objective: dict[str, Any] | None = None  # the update: critic, CVaR alpha and weight, KL penalty and early stop


class FoldResult(_Record):
    """One fold's out-of-sample metrics per strategy (the policy and the baselines)."""

    fold: int
    test_start: str
    test_end: str
    metrics: dict[str, dict[str, float]]


class OutOfSample(_Record):
    """Out-of-sample evidence: per fold, and (from registration) the summary over folds and the gate's reasons."""

    folds: list[FoldResult]
    summary: dict[str, dict[str, float]] | None = None
    gate: list[str] | None = None
    evidence: dict[str, Any] | None = None  # the gate's checks and statistics (``registration.gate_record``)


class DataProvenance(_Record):
    """The data a policy was trained and tested on: the manifest's fingerprint, its files, the span of the folds."""

    fingerprint: str
    files: list[dict[str, str | None]]
    first_train: str
    last_test: str


class RegistryEntry(_Record):
    model_name: str
    version: str
    alias: str


class ExportMetadata(_Record):
    """The metadata of a Sentio export (``STEM-metadata.json``); build it with :func:`build_metadata`."""

    format: str
    algorithm: str
    obs_dim: int
    n_actions: int
    net_arch: list[int]
    model: dict[str, Any] | None = None  # the network beyond the MLP (sentio_core.networks.ModelSpec); None: sb3's MLP
    model_type: str
    policy: PolicySpec
    regime_model: dict[str, Any]
    training: TrainingSummary
    config: dict[str, Any]
    config_hash: str
    code_version: str  # the code that wrote it: the training stage's code version, or the project's (registration, sentio train)
    out_of_sample: OutOfSample | None = None
    data: DataProvenance | None = None
    registry: RegistryEntry | None = None
    created_at: str | None = None
    weights_sha256: str | None = None  # the .pth file's SHA-256, set when the pair is written; load_policy checks it

    def header(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HEADER_KEYS}

    def run_config(self) -> Config:
        return Config.model_validate(self.config)


def build_metadata(header: dict[str, Any], policy: PolicySpec, regime_model: dict[str, Any], training: TrainingSummary,
                   cfg: Config, code_version: str, out_of_sample: OutOfSample | None = None,
                   data: DataProvenance | None = None, registry: RegistryEntry | None = None) -> ExportMetadata:
    """The export metadata of a trained policy: the one builder for ``sentio train``, the training
    stage (no out-of-sample results or data provenance yet) and registration (all of it).

    :param header: :func:`policy_header` of the model (or the header of an export being republished).
    """
    config = cfg.identity()
    return ExportMetadata(**header, model_type=header["algorithm"], policy=policy, regime_model=regime_model,
                          training=training, config=config, config_hash=stable_hash(config), code_version=code_version,
                          out_of_sample=out_of_sample, data=data, registry=registry)
