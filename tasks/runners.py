"""The task runner of the per-fold work, chosen by ``run.task_runner`` (threads, Dask or Ray)."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from sentio_core.config import RunConfig


def task_runner(cfg: RunConfig):
    """Threads by default; Dask or Ray with ``run.cluster_address`` or a local cluster of
    ``run.workers`` single-threaded worker processes (each process trains on its own torch RNG)."""
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=max(2, cfg.workers))
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.cluster_address:
            return DaskTaskRunner(address=cfg.cluster_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise RuntimeError("run.task_runner 'ray' needs the ray extra: .venv/bin/uv pip install 'prefect-ray==0.6.0'") from exc

    if cfg.cluster_address:
        return RayTaskRunner(address=cfg.cluster_address)
    return RayTaskRunner(init_kwargs={"num_cpus": cfg.workers, "include_dashboard": False})
