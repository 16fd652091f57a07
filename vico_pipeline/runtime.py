"""Starting or joining Ray.

An embedded local Ray by default, bound to loopback; a cluster only when asked:
`ray.address` in the config, or when we run inside a Ray job (the job server
sets RAY_ADDRESS to its cluster's address for the entrypoint, which is how
`vico submit`'s `vico run` finds the cluster it runs on).
"""
from __future__ import annotations

import logging
import os
import sys


def cluster_address(ray_config) -> str | None:
    """The cluster to join, or None for an embedded local Ray."""
    from vico_pipeline.config import ConfigError

    address = ray_config.address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        # A dashboard / job server URL is for `vico submit`; a driver joins through the GCS address.
        raise ConfigError(f"RAY_ADDRESS={address} is a job server address: use `vico submit CONFIG` to run "
                          "on that cluster, or unset RAY_ADDRESS to run on this machine")
    return address


def init_ray(ray_config) -> str:
    """Start or join Ray; returns a one-line description of where we run (with the dashboard address)."""
    # Loopback only for a local Ray (otherwise it binds to the machine's interface address).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray

    if ray.is_initialized():
        return "ray: already initialised in this process" + _dashboard_note(_current_dashboard())
    address = cluster_address(ray_config)
    if address:
        context = ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        where = f"ray: joined the cluster at {address} ({_resources()})"
    else:
        kwargs = {}
        if ray_config.dashboard:
            kwargs.update(dashboard_host="127.0.0.1", dashboard_port=None)
        context = ray.init(address="local", num_cpus=ray_config.num_cpus, include_dashboard=ray_config.dashboard,
                           object_store_memory=ray_config.object_store_memory,
                           logging_level=logging.WARNING, log_to_driver=True,
                           _node_ip_address="127.0.0.1", **kwargs)
        where = f"ray: embedded local Ray ({_resources()})"
    return where + _dashboard_note(getattr(context, "dashboard_url", None))


def _resources() -> str:
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"{nodes} node{'s' if nodes != 1 else ''}, {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs"


def _current_dashboard() -> str | None:
    import ray

    try:  # no public API for the dashboard of an existing session
        return ray._private.worker.global_worker.node.webui_url or None
    except AttributeError:
        return None


def _dashboard_note(url: str | None) -> str:
    if url:
        return f"; dashboard at http://{url}" if "://" not in url else f"; dashboard at {url}"
    return "; no dashboard (ray.dashboard: true starts one)"


def configure_data_context(progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress and sys.stderr.isatty()
    ctx.enable_operator_progress_bars = ctx.enable_progress_bars
    # Our rows carry only references; keep Ray's own verbose messages off the terminal.
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
