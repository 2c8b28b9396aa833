"""Browser test: the Prefect UI shows the fold table of a deployment run, one row per fold.

The whole operator path, end to end: a real Prefect server (temporary PREFECT_HOME), the `sentio`
process work pool, `prefect deploy --all` from prefect.yaml, a process worker, a run of
`sentio-retrain/on-demand` on the smoke config, then the `sentio-folds` artifact of that run opened
in headless Debian chromium (`.ci/run` installs it). The screenshot is kept at
`.sentio/test-artifacts/fold-table.png`. Every process started here is stopped in a `finally`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest

from .conftest import FAST_TRAINING, REPO, fresh_prefect_home

pytestmark = [pytest.mark.flow, pytest.mark.slow]

PREFECT = str(Path(sys.executable).with_name("prefect"))
SCREENSHOT = REPO / ".sentio" / "test-artifacts" / "fold-table.png"
N_FOLDS = 2  # configs/smoke.yaml
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--run-all-compositor-stages-before-draw"]
SERVER_START_S, CLI_S, FLOW_RUN_S, BROWSER_S = 120, 120, 300, 120
WORKER_GRACE_S, SERVER_GRACE_S = 15, 15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class _Procs:
    """The long-running processes of this test, each in its own process group, and every descendant seen."""

    def __init__(self):
        self.started: list[tuple[str, subprocess.Popen, Path]] = []
        self.seen: dict[int, psutil.Process] = {}

    def start(self, name: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
        fh = open(log, "wb")
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        fh.close()
        self.started.append((name, proc, log))
        self.snapshot()
        return proc

    def snapshot(self) -> None:
        """Remember every live descendant (a flow-run process may leave the worker's process group)."""
        for _, proc, _ in self.started:
            try:
                p = psutil.Process(proc.pid)
                for q in [p, *p.children(recursive=True)]:
                    self.seen.setdefault(q.pid, q)
            except psutil.Error:
                pass

    def check_alive(self, name: str) -> None:
        for n, proc, log in self.started:
            if n == name and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}; its log ends:\n{_tail(log)}")

    def logs(self) -> str:
        return "\n".join(f"--- {n} log ({log}) ---\n{_tail(log)}" for n, _, log in self.started)

    def stop(self, name: str, first: signal.Signals, grace: float) -> None:
        proc = next(p for n, p, _ in self.started if n == name)
        self.snapshot()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, first)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever remains of its group
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        how = "exited" if proc.returncode >= 0 or proc.returncode == -first else "killed"
        print(f"[browser test] {name} {how} (return code {proc.returncode})", flush=True)

    def survivors(self) -> list[psutil.Process]:
        """Processes seen during the test that still run (zombies count as gone: PID 1 may not reap them)."""
        alive = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        return alive

    def kill_survivors(self) -> list[str]:
        names = []
        for p in self.survivors():
            try:
                names.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs([p for p in self.seen.values()], timeout=10)
        return names


def _prefect(args: list[str], env: dict, timeout: float = CLI_S) -> str:
    out = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"prefect {' '.join(args)} failed ({out.returncode}):\n{text[-4000:]}"
    return text


def _chromium(chromium: str, args: list[str], profile: Path, timeout: float = BROWSER_S) -> str:
    """Run headless chromium in its own process group; kill the whole group on a timeout."""
    profile.mkdir(parents=True)
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], cwd=profile,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        raise AssertionError(f"chromium did not finish within {timeout} s: {args}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers (zygote, utility processes) that outlived it
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{err[-4000:]}"
    return out


class _Tables(HTMLParser):
    """Every <table> of a document: its header texts and the cell texts of its body rows."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self._stack: list[dict] = []
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._stack.append({"headers": [], "rows": []})
        elif not self._stack:
            return
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._stack[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag):
        if not self._stack:
            return
        if tag == "table":
            self.tables.append(self._stack.pop())
            self._in_body = False
        elif tag == "tbody":
            self._in_body = False
        elif tag in ("th", "td") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            table = self._stack[-1]
            if tag == "th" and not self._in_body:
                table["headers"].append(text)
            elif self._in_body and table["rows"]:
                table["rows"][-1].append(text)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _wait_health(url: str, procs: _Procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive("server")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the Prefect server was not healthy within {timeout} s\n{procs.logs()}")


def test_ui_renders_the_fold_table_of_a_deployment_run(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: .ci/run installs it "
                    "(apt-get install -y --no-install-recommends chromium); install it the same way to run this test")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    timings: list[tuple[str, float]] = []

    def phase(name: str) -> None:
        timings.append((name, time.monotonic() - t0 - sum(t for _, t in timings)))
        print(f"[browser test] {name}: {timings[-1][1]:.1f} s", flush=True)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api"
    env = {**os.environ, "PREFECT_HOME": fresh_prefect_home(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
           # the nightly deployment's schedule must not create runs on this throw-away server
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
           "PREFECT_CLI_PROMPT": "false", "COLUMNS": "250", "NO_COLOR": "1"}
    # the worker polls every 2 s instead of 10 s, so it picks the run up sooner
    worker_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    procs = _Procs()
    try:
        procs.start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env, tmp_path / "server.log")
        _wait_health(api, procs, SERVER_START_S)
        phase("server healthy")

        _prefect(["work-pool", "create", "sentio", "--type", "process"], env)
        deployed = _prefect(["--no-prompt", "deploy", "--all"], env)
        assert "sentio-retrain/on-demand" in deployed and "sentio-retrain/nightly" in deployed, deployed[-3000:]
        phase("work pool and deployments")

        procs.start("worker", [PREFECT, "worker", "start", "--pool", "sentio"], worker_env, tmp_path / "worker.log")
        overrides = json.dumps([f"run.work_dir={tmp_path}/work", f"registry.export_dir={tmp_path}/exports", *FAST_TRAINING])
        started = _prefect(["deployment", "run", "sentio-retrain/on-demand", "--param", "config=configs/smoke.yaml",
                            "--param", f"overrides={overrides}"], env)
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
        assert match, f"no flow run id in:\n{started}"
        flow_run_id = match.group(1)

        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + FLOW_RUN_S
            while True:
                run = client.read_flow_run(flow_run_id)
                if run.state is not None and run.state.is_final():
                    break
                procs.check_alive("worker")
                procs.snapshot()
                assert time.monotonic() < deadline, (
                    f"flow run {flow_run_id} still {run.state.name if run.state else None} after {FLOW_RUN_S} s\n"
                    f"{procs.logs()}")
                time.sleep(1)
            assert run.state.is_completed(), f"flow run ended {run.state.name}: {run.state.message}\n{procs.logs()}"
            assert run.parameters["config"] == "configs/smoke.yaml"
            phase("deployment run (worker pick-up and smoke flow)")

            arts = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["sentio-folds"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        assert len(arts) == 1, f"expected one sentio-folds artifact of flow run {run.id}, got {len(arts)}"
        art = arts[0]
        rows = art.data if isinstance(art.data, list) else json.loads(art.data)
        assert [r["fold"] for r in rows] == list(range(N_FOLDS))

        page = f"{base}/artifacts/artifact/{art.id}"
        for attempt, budget in enumerate((30_000, 90_000)):  # virtual ms; a second, longer try if the SPA was slow
            dom = _chromium(chromium, [f"--virtual-time-budget={budget}", "--window-size=1600,1000", "--dump-dom", page],
                            tmp_path / f"chromium-dom-{attempt}")
            (tmp_path / "page.html").write_text(dom)
            parser = _Tables()
            parser.feed(dom)
            tables = [t for t in parser.tables if "maskable_ppo_sharpe" in t["headers"]]
            if tables:
                break
            print(f"[browser test] no fold table rendered with a {budget} ms budget; trying again", flush=True)
        assert len(tables) == 1, (f"{page}: expected one rendered table with a maskable_ppo_sharpe column, found "
                                  f"{len(tables)} (of {len(parser.tables)} tables); DOM saved at {tmp_path / 'page.html'}")
        table = tables[0]
        assert {"fold", "train_start", "test_end", "ppo_sharpe", "flat_total_return"} <= set(table["headers"])
        assert len(table["rows"]) == N_FOLDS, f"{len(table['rows'])} body rows rendered, expected {N_FOLDS}"
        fold_col = table["headers"].index("fold")
        assert [r[fold_col] for r in table["rows"]] == ["0", "1"]
        count = re.search(r'class="artifact-data-table__count"[^>]*>\s*(\d+)\s*<', dom)
        assert count and int(count.group(1)) == N_FOLDS, f"the UI's item count: {count and count.group(1)}"
        sharpe_col = table["headers"].index("maskable_ppo_sharpe")
        for shown, row in zip(table["rows"], rows):
            assert float(shown[sharpe_col]) == pytest.approx(row["maskable_ppo_sharpe"])
        phase("UI page rendered (dump-dom)")

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.unlink(missing_ok=True)
        _chromium(chromium, [f"--virtual-time-budget={budget}", "--window-size=1600,1000", f"--screenshot={SCREENSHOT}",
                             page], tmp_path / "chromium-shot")
        assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 10_000, f"no usable screenshot at {SCREENSHOT}"
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        phase(f"screenshot ({SCREENSHOT.stat().st_size // 1024} kB at {SCREENSHOT})")
    finally:
        for name, first, grace in (("worker", signal.SIGINT, WORKER_GRACE_S), ("server", signal.SIGTERM, SERVER_GRACE_S)):
            if any(n == name for n, _, _ in procs.started):
                procs.stop(name, first, grace)
        leftovers = procs.kill_survivors()
        phase("processes stopped")
        print(f"[browser test] total: {time.monotonic() - t0:.1f} s", flush=True)
    assert not leftovers, f"processes outlived their group's shutdown (killed now): {leftovers}"
    assert all(p.returncode is not None for _, p, _ in procs.started)
