"""Starting or joining Ray.

An embedded local Ray by default, bound to loopback; a cluster only when asked:
`ray.address` in the config, or when we run inside a Ray job (the job server
sets RAY_ADDRESS for its entrypoint).
"""
from __future__ import annotations

import logging
import os
import sys


def init_ray(ray_config) -> str:
    """Start or join Ray; returns a one-line description of where we run."""
    # Loopback only for a local Ray (otherwise it binds to the machine's interface address).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray

    if ray.is_initialized():
        return "ray: already initialised in this process"
    address = ray_config.address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        where = f"ray: joined the cluster at {address}"
    else:
        context = ray.init(address="local", num_cpus=ray_config.num_cpus, include_dashboard=False,
                           logging_level=logging.WARNING, log_to_driver=True,
                           _node_ip_address="127.0.0.1")
        where = f"ray: embedded local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs"
    dashboard = getattr(context, "dashboard_url", None)
    if dashboard:
        where += f"; dashboard at http://{dashboard}"
    return where


def configure_data_context(progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress and sys.stderr.isatty()
    ctx.enable_operator_progress_bars = ctx.enable_progress_bars
    # Our rows carry only references; keep Ray's own verbose messages off the terminal.
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
