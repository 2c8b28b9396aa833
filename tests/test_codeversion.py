"""Cache keys from the code: each stage's code version follows the static import graph.

The golden table says which library modules each stage runs; the edit tests copy the tree, edit
one module at a time, and check that exactly the stages that import it (transitively) get a new
key, that a comment or docstring edit changes nothing, and that a new key in one config section
changes only the stages that read that section.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from sentio_core.codeversion import closure, code_version, project_imports
from sentio_core.config import load_config

from .conftest import REPO, SMOKE

from tasks.common import STAGE_MODULES as _TASK_MODULES  # noqa: E402

STAGE_MODULES = tuple(m.removeprefix("tasks.") for m in _TASK_MODULES)
# every stage runs config.py (section by section), codeversion.py (its key), files.py (its outputs)
# and memory.py (it hands freed memory back when it ends)
COMMON = {"algorithms", "codeversion", "config", "files", "memory"}
MODEL = {"networks", "learner"}  # every stage that builds or loads a policy
GOLDEN = {
    "ingest": COMMON | {"data", "frequency", "universe"},
    "validate": COMMON | {"data", "frequency", "universe", "validation"},
    "panel": COMMON | {"data", "frequency", "universe"},
    "features": COMMON | {"features", "frequency"},
    # the combinatorial splitter lives beside its paths' Sharpe ratios (metrics)
    "folds": COMMON | {"cpcv", "features", "folds", "frequency", "metrics", "ranges"},
    "regimes": COMMON | {"ranges", "regimes"},
    "train": COMMON | {"backtest", "baselines", "costs", "engine", "env", "export", "features", "frequency", "market", "masks",
                       "metadata", "metrics", "policies", "ranges", "train", "vec_env"} | MODEL,  # validation runs the backtest on the inner slice
    "backtest": COMMON | {"backtest", "baselines", "costs", "engine", "env", "export", "features", "frequency", "market", "masks", "metadata",
                          "metrics", "plots", "policies", "ranges", "returns"} | MODEL,
    "rescore": COMMON | {"backtest", "baselines", "costs", "engine", "env", "export", "features", "frequency", "market", "masks", "metadata",
                         "metrics", "policies", "ranges", "regimes", "registry", "rescore"} | MODEL,
    "drift": COMMON | {"drift", "export", "features", "frequency", "market", "masks", "metadata", "policies", "ranges", "regimes",
                       "registry"} | MODEL,
    "register": COMMON | {"baselines", "evidence", "export", "metadata", "metrics", "plots", "policies", "promotion",
                          "registration", "registry", "returns", "trials"} | MODEL,
    "cpcv": COMMON | {"baselines", "cpcv", "evidence", "export", "metadata", "metrics", "policies", "promotion", "ranges",
                      "registration", "registry", "returns", "trials"} | MODEL,
}


def _keys():
    return {name: importlib.import_module(f"tasks.{name}").KEY for name in STAGE_MODULES}


def test_golden_table_of_stage_modules():
    keys = _keys()
    assert {name: set(key.code.library_modules) for name, key in keys.items()} == GOLDEN
    assert {key.stage for key in keys.values()} == set(STAGE_MODULES)


def test_every_library_module_is_run_by_some_stage_or_is_known_not_to_be():
    library = {p.stem for p in (REPO / "sentio_core").glob("*.py")} - {"__init__"}
    used = set().union(*GOLDEN.values())
    # the report formatting runs in the flow and the CLI, not in a cached stage; the gate's null
    # test is research tooling (tests and scripts/null_gate.py); the decision API serves the
    # trading application
    assert library - used == {"report", "nulltest", "decision"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    for package in ("sentio_core", "tasks"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.lock", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    return root


def _versions(root: Path) -> dict[str, str]:
    return {name: code_version(key.module, key.schema, root).digest for name, key in _keys().items()}


def _stage_keys(root: Path) -> dict[str, str]:
    """Full cache keys for a fixed config and fixed input fingerprints, under the tree at ``root``."""
    cfg = load_config(SMOKE)
    out = {}
    for name, key in _keys().items():
        version = code_version(key.module, key.schema, root).digest
        out[name] = f"{name}-{cfg.section_hash(*key.sections)}-{version}"
    return out


def _rerun_after(tree: Path, relative: str, edit) -> set[str]:
    """The stages whose key changes when ``edit(text) -> text`` is applied to ``tree/relative``."""
    path = tree / relative
    original = path.read_text()
    before = _stage_keys(tree)
    path.write_text(edit(original))
    try:
        after = _stage_keys(tree)
    finally:
        path.write_text(original)
    return {name for name in before if before[name] != after[name]}


def test_the_copied_tree_has_the_repository_versions(tree):
    assert _versions(tree) == {name: key.version for name, key in _keys().items()}


@pytest.mark.parametrize("module", sorted(set().union(*GOLDEN.values()) - {"config"}))
def test_editing_a_library_module_reruns_exactly_its_stages(tree, module):
    changed = _rerun_after(tree, f"sentio_core/{module}.py", lambda text: text + "\n_EDITED = 1\n")
    assert changed == {name for name, modules in GOLDEN.items() if module in modules}


def test_editing_costs_reruns_training_backtests_and_the_champion_rescore(tree):
    changed = _rerun_after(tree, "sentio_core/costs.py", lambda text: text + "\n_EDITED = 1\n")
    assert changed == {"train", "backtest", "rescore"}


def test_editing_drift_reruns_only_drift(tree):
    changed = _rerun_after(tree, "sentio_core/drift.py", lambda text: text.replace("PSI_STABLE", "PSI_STABLE_"))
    assert changed == {"drift"}


@pytest.mark.parametrize("module", ["costs", "drift", "features", "config"])
def test_comments_and_docstrings_rerun_nothing(tree, module):
    def edit(text: str) -> str:
        text = text.replace('"""', '"""Edited docstring. ', 1)  # the module docstring
        return "# a new comment\n" + text.replace("\n\n\ndef ", "\n\n\n# a comment before a function\ndef ", 1)

    assert _rerun_after(tree, f"sentio_core/{module}.py", edit) == set()


def test_a_new_key_in_one_config_section_reruns_only_its_readers(tree):
    """A new schema key in ``drift`` changes the drift section's values and its class: drift,
    register and the CPCV paths (which record the whole model config and hash it into the trials)
    and the champion re-score (which validates the champion's own config through every section's
    class) run again, nothing else."""
    def add_key(text: str) -> str:
        anchor = "class DriftConfig(_Section):\n"
        return text.replace(anchor, anchor + "    new_knob: int = 3\n")

    changed = _rerun_after(tree, "sentio_core/config.py", add_key)
    assert changed == {name for name, key in _keys().items() if "drift" in key.schema} == {"drift", "register", "rescore", "cpcv"}


def test_config_code_outside_the_sections_reruns_every_stage(tree):
    changed = _rerun_after(tree, "sentio_core/config.py",
                           lambda text: text.replace("return self.seed + 1000 * int(fold)", "return self.seed + 999 * int(fold)"))
    assert changed == set(STAGE_MODULES)


def test_a_function_level_import_counts(tree):
    """An import inside a function body joins the graph: folds then runs drift.py too."""
    def add_import(text: str) -> str:
        return text + "\n\ndef _later():\n    from sentio_core import drift\n    return drift\n"

    path = tree / "sentio_core" / "folds.py"
    original = path.read_text()
    path.write_text(add_import(original))
    try:
        assert "sentio_core.drift" in project_imports(tree, "sentio_core.folds")
        assert "sentio_core.drift" in closure(tree, "tasks.folds")
    finally:
        path.write_text(original)
    assert "sentio_core.drift" not in closure(tree, "tasks.folds")


def test_type_checking_imports_do_not_count(tree):
    """Records handed in by another stage are annotated under ``if TYPE_CHECKING:``: no code of
    theirs runs, so the producing modules are not in the consumer's graph."""
    assert "sentio_core.folds" not in closure(tree, "tasks.regimes")
    assert "tasks.folds" not in closure(tree, "tasks.train")


def _rerun_after_lock_change(tree: Path, pin: str, new_pin: str) -> set[str]:
    """The stages whose code version changes when ``pin`` becomes ``new_pin`` in the lock file."""
    from sentio_core import codeversion

    lock = tree / "requirements.lock"
    original = lock.read_text()
    assert pin in original
    before = _versions(tree)
    lock.write_text(original.replace(pin, new_pin))
    codeversion.locked_versions.cache_clear()
    try:
        after = _versions(tree)
    finally:
        lock.write_text(original)
        codeversion.locked_versions.cache_clear()
    return {n for n in before if before[n] != after[n]}


def test_a_locked_library_version_enters_the_key(tree):
    # every stage reads or writes polars frames
    assert _rerun_after_lock_change(tree, "polars==2.1.0", "polars==2.1.1") == set(STAGE_MODULES)
    assert ("polars", "2.1.0") in code_version("tasks.features", ("features",), tree).libraries


def test_a_regime_backend_library_moves_only_the_stages_that_fit_or_filter_regimes(tree):
    assert _rerun_after_lock_change(tree, "hmmlearn==0.3.3", "hmmlearn==0.3.4") == {"regimes", "rescore", "drift"}


def test_the_champion_rescore_runs_every_sections_schema_but_reads_no_value():
    """Re-scoring validates the champion's own config through every schema class (their code is in
    its version) and reads only where the champion is (``registry``): a cost setting of this run
    does not re-score the champion, an edit of the cost schema does."""
    key = _keys()["rescore"]
    assert key.sections == ("registry",)
    assert {"costs", "masks", "env", "universe", "drift"} <= set(key.schema)


def test_a_cost_schema_edit_reruns_the_stages_that_run_it(tree):
    changed = _rerun_after(tree, "sentio_core/config.py", lambda text: text.replace(
        'raise KeyError(f"costs.half_spread_bps has no entry', 'raise LookupError(f"costs.half_spread_bps has no entry'))
    assert changed == {"train", "backtest", "rescore", "register", "cpcv"}
