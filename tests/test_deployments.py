"""prefect.yaml against a real Prefect server: both deployments on the `sentio` pool, and the nightly
cron schedule actually produces scheduled runs (weekdays, 17:30 New York).

A flow run alone does not catch a broken scheduler: with SQLAlchemy 2.1 Prefect 3.8.8's scheduler
fails on every loop and no nightly run is ever created, which is why sqlalchemy is pinned."""

from __future__ import annotations

import os
import time
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import fresh_prefect_home
from tests.test_browser import PREFECT, SERVER_START_S, _free_port, _prefect, _Procs, _wait_health

pytestmark = [pytest.mark.flow, pytest.mark.slow]


def test_deploy_all_creates_both_deployments_and_schedules_nightly_runs(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": fresh_prefect_home(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_CLI_PROMPT": "false", "COLUMNS": "250", "NO_COLOR": "1"}
    procs = _Procs()
    try:
        procs.start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env, tmp_path / "server.log")
        _wait_health(api, procs, SERVER_START_S)
        _prefect(["work-pool", "create", "sentio", "--type", "process"], env)
        _prefect(["--no-prompt", "deploy", "--all"], env)
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("sentio-retrain/nightly")
            on_demand = client.read_deployment_by_name("sentio-retrain/on-demand")
            for dep in (nightly, on_demand):
                assert dep.work_pool_name == "sentio"
                assert dep.parameters == {"config": "configs/base.yaml", "overrides": []}
            assert on_demand.schedules == []
            (sched,) = nightly.schedules
            assert sched.schedule.cron == "30 17 * * 1-5" and sched.schedule.timezone == "America/New_York"
            deadline = time.monotonic() + 90
            while True:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
                if runs:
                    break
                procs.check_alive("server")
                assert time.monotonic() < deadline, f"no scheduled nightly run after 90 s\n{procs.logs()}"
                time.sleep(1)
        starts = [r.expected_start_time.astimezone(ZoneInfo("America/New_York")) for r in runs]
        assert all(s.weekday() < 5 and (s.hour, s.minute) == (17, 30) for s in starts), starts
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        procs.stop("server", __import__("signal").SIGTERM, 15)
        procs.kill_survivors()
