"""Run reports: the fold table and the data summary as Prefect artifacts of the flow run.

These are plain functions, not tasks: a cached stage does not run its body, so anything a user
must see on *every* run (including a fully cached one) is published from the flow run itself.
"""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common import StageOutput


def fold_rows(folds: StageOutput, regimes: list[StageOutput]) -> list[dict]:
    """One row per fold: dates, sizes, purge/embargo and regime shares (train / test)."""
    by_fold = {r.meta["fold"]: r.meta for r in regimes}
    rows = []
    for span in folds.meta["folds"]:
        row = {k: span[k] for k in ("fold", "train_start", "train_end", "test_start", "test_end",
                                    "train_bars", "test_bars", "purge_bars", "embargo_bars")}
        for k in ("train_start", "train_end", "test_start", "test_end"):
            row[k] = row[k][:16].replace("T00:00", "")
        reg = by_fold.get(span["fold"])
        if reg is not None:
            for i, (a, b) in enumerate(zip(reg["train_shares"], reg["test_shares"])):
                row[f"regime_{i}_train"] = round(a, 3)
                row[f"regime_{i}_test"] = round(b, 3)
        rows.append(row)
    return rows


def publish(rows: list[dict], panel: StageOutput, features: StageOutput, stage_states: dict[str, str]) -> None:
    """Create the fold table artifact and a run summary artifact."""
    create_table_artifact(rows, key="sentio-folds", description="Purged walk-forward folds: dates, sizes, purge, regime shares")
    lines = ["# Sentio run summary", "", "## Data", ""]
    lines += [f"- {line.strip()}" for line in panel.meta["alignment_lines"]]
    lines += ["", f"- features: {features.meta['n_features']} columns, {features.meta['rows']} rows, "
              f"warm-up {features.meta['warmup_rows']} rows", "", "## Stages", "", "| stage | state |", "|---|---|"]
    lines += [f"| {name} | {state} |" for name, state in stage_states.items()]
    create_markdown_artifact("\n".join(lines), key="sentio-run-summary", description="Data alignment and stage states")


def format_table(rows: list[dict]) -> str:
    """Plain-text table for the terminal."""
    if not rows:
        return "(no folds)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    head = "  ".join(c.rjust(width[c]) for c in cols)
    body = ["  ".join(str(r.get(c, "")).rjust(width[c]) for c in cols) for r in rows]
    return "\n".join([head, "-" * len(head), *body])
