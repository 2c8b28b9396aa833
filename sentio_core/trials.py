"""The trial ledger's records: every trained policy is a trial, and every statistic that corrects for
selection counts them.

A :class:`TrialRecord` is one trained policy (one fold of one algorithm's seed) with its
out-of-sample bar returns after costs. Registration writes the run's records to MLflow (a JSON
artifact per child run, ``sentio_core.registry.log_trials``) and reads back every record of the
same experiment, universe and bar frequency, across nights and data updates
(``sentio_core.registry.load_trials``). Pure: records in, trials and their statistics out.

**What one trial is.** A trial is one *configuration x seed slot x data x code*: the records that
share ``(config_hash, algorithm, variant, seed_index, data_fingerprint, code_version)``, their
folds' returns concatenated in fold order. Each seed of a configuration is its own trial: the
pipeline keeps the best seed of each fold on the validation slice, and a seed is something that
was tried. A night whose data changed is a new trial of the same configuration (it is one more
look at the market); the same inputs logged twice (a re-registration) are one trial, because
the same config, data, code and seed give the same policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from sentio_core.evidence import sharpe_moments
from sentio_core.files import DataError


class TrialRecord(BaseModel):
    """One trained policy's out-of-sample evidence and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str
    universe: str  # underlying/long/short (``universe_label``)
    bar_frequency: str  # 1d, 5min, ... (``frequency_label``)
    config_hash: str
    algorithm: str
    variant: str  # the network and objective (``variant_label``)
    seed: int  # the seed this fold trained with
    seed_index: int  # its slot: the fold's base seed + seed_index
    fold: int
    chosen: bool  # the seed kept for this fold on the validation slice
    data_fingerprint: str
    code_version: str
    timestamps: list[str]  # each P&L bar's close
    returns: list[float]  # bar returns after costs, fractions
    policy_sha256: str = ""  # the trained policy's weights (its export's SHA-256): the same policy is the same trial

    @property
    def trial_key(self) -> tuple[str, str, str, int, str, str]:
        return (self.config_hash, self.algorithm, self.variant, self.seed_index, self.data_fingerprint, self.code_version)


@dataclass(frozen=True)
class Trial:
    """One trial: its records' returns concatenated in fold order."""

    key: tuple[str, str, str, int, str, str]
    folds: tuple[int, ...]
    returns: np.ndarray

    @property
    def algorithm(self) -> str:
        return self.key[1]

    @property
    def sharpe(self) -> float:
        """Per-bar Sharpe ratio of the concatenated returns."""
        return sharpe_moments(self.returns)[0]


@dataclass(frozen=True)
class LedgerStats:
    """What deflation needs from the ledger: how many trials, and how much their Sharpe ratios vary."""

    n_trials: int
    var_sharpe: float  # variance (ddof=1) of the trials' per-bar Sharpe ratios; 0 for one trial
    n_records: int

    def to_dict(self) -> dict:
        return {"n_trials": self.n_trials, "var_sharpe": self.var_sharpe, "n_records": self.n_records}


def universe_label(underlying: str, long: str | None, short: str | None, synthesize: bool) -> str:
    """``QQQ/TQQQ/SQQQ`` (``-`` for an absent leg; ``+synthetic`` when the legs are built from the underlying)."""
    return f"{underlying}/{long or '-'}/{short or '-'}" + ("+synthetic" if synthesize else "")


def frequency_label(bar_minutes: float | None) -> str:
    """``1d`` for daily bars, ``5min`` for five-minute bars."""
    return "1d" if bar_minutes is None else f"{bar_minutes:g}min"


def records_from(where: str, rows: Any) -> list[TrialRecord]:
    """A ``trials.json`` artifact's records.

    :raises DataError: naming ``where`` (the run's artifact) when it is not a list of trial records.
    """
    if not isinstance(rows, list):
        raise DataError(where, "trial records", f"a {type(rows).__name__}, not a list of records")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(TrialRecord.model_validate(row))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise DataError(where, "trial records", f"record {i}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return out


def relevant(records: Iterable[TrialRecord], experiment: str, universe: str, bar_frequency: str) -> list[TrialRecord]:
    """The records that bear on a decision about this experiment, universe and bar frequency."""
    return [r for r in records if (r.experiment, r.universe, r.bar_frequency) == (experiment, universe, bar_frequency)]


def group(records: Iterable[TrialRecord]) -> list[Trial]:
    """Trials from records, in first-seen order; a (trial, fold) logged twice counts once, and so does
    a trial whose folds' policies are all the same policies as an earlier trial's (the same trained
    weights registered again, after a code change elsewhere or on a night whose new bars moved no
    fold: the same policies looked at again, not a new try)."""
    folds: dict[tuple, dict[int, TrialRecord]] = {}
    for r in records:
        folds.setdefault(r.trial_key, {}).setdefault(r.fold, r)
    out, seen = [], set()
    for key, by_fold in folds.items():
        order = sorted(by_fold)
        policies = tuple((f, by_fold[f].algorithm, by_fold[f].policy_sha256) for f in order)
        if all(p for *_, p in policies):
            if policies in seen:
                continue
            seen.add(policies)
        out.append(Trial(key, tuple(order), np.concatenate([np.asarray(by_fold[f].returns, dtype=float) for f in order])))
    return out


def ledger_stats(trials: Sequence[Trial], n_records: int | None = None) -> LedgerStats:
    """The number of trials and the variance of their Sharpe ratios (trials of fewer than 2 bars are
    counted but carry no Sharpe ratio)."""
    if not trials:
        raise ValueError("the ledger holds no trial; a decision needs at least the candidate's own")
    sharpes = [t.sharpe for t in trials if t.returns.size >= 2]
    var = float(np.var(sharpes, ddof=1)) if len(sharpes) >= 2 else 0.0
    return LedgerStats(len(trials), var, n_records if n_records is not None else sum(len(t.folds) for t in trials))
