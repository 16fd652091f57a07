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
    # Loopback only for a local Ray: vico_pipeline/__init__.py set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    # before anything imported ray (otherwise it binds to the machine's interface address).
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = cluster_address(ray_config)
    if address:
        _allow_cluster()
    import ray

    quiet_ray_start(getattr(ray_config, "progress", False))
    if ray.is_initialized():
        start_domain_gate()
        return "ray: already initialised in this process" + _dashboard_note(_current_dashboard())
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
    start_domain_gate()
    return where + _dashboard_note(getattr(context, "dashboard_url", None))


def _allow_cluster() -> None:
    """Undo the package's loopback default before joining a cluster (`ray.address` in the config):
    a driver that told Ray "loopback only" would announce 127.0.0.1 to the other nodes."""
    from vico_pipeline import LOOPBACK_ENV

    if os.environ.pop("VICO_SET_RAY_LOOPBACK", None):
        os.environ.pop(LOOPBACK_ENV, None)
        if "ray" in sys.modules:  # already imported: Ray read the variable into this constant
            from ray._private import ray_constants
            ray_constants.ENABLE_RAY_CLUSTER = True


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
    """Ray Data's own bars and info logs only with `ray.progress: true` (vico shows its own lines)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress and sys.stderr.isatty()
    ctx.enable_operator_progress_bars = ctx.enable_progress_bars
    # Our rows carry only references; keep Ray's own verbose messages off the terminal.
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    level = logging.INFO if progress else logging.ERROR
    for handler in logging.getLogger("ray.data").handlers:  # its file log keeps everything
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(level)


def quiet_ray_start(verbose: bool) -> None:
    """Ray's start-up notices (token authentication on, ...) only when asked for (`-v`)."""
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(level)


# --------------------------------------------------------------------------- cluster-wide per-domain gate
GATE_ACTOR = "vico-domain-gate"
# A slot held longer than this is taken back: a worker killed mid-download must not block its host.
GATE_LEASE_S = 1800.0
_gate_handle = None


class _DomainGateActor:
    """Per-host download slots and start spacing for the whole run, shared by every worker process."""

    def __init__(self):
        import asyncio
        self._cond = asyncio.Condition()
        self._held: dict[str, dict[int, float]] = {}  # host -> {slot id: time taken}
        self._next_start: dict[str, float] = {}
        self._ids = 0

    def _expire(self, host: str, now: float) -> None:
        held = self._held.setdefault(host, {})
        for slot, taken in list(held.items()):
            if now - taken > GATE_LEASE_S:
                del held[slot]

    async def acquire(self, host: str, concurrency: int, interval_s: float) -> tuple[int, float]:
        """Waits for a free slot; returns (slot id, seconds the caller sleeps before starting)."""
        import time
        async with self._cond:
            while True:
                now = time.monotonic()
                self._expire(host, now)
                if len(self._held[host]) < max(1, concurrency):
                    break
                try:  # wake up for releases, and now and then for expired leases
                    import asyncio
                    await asyncio.wait_for(self._cond.wait(), timeout=min(30.0, GATE_LEASE_S))
                except asyncio.TimeoutError:
                    pass
            self._ids += 1
            self._held[host][self._ids] = now
            start = max(now, self._next_start.get(host, 0.0))
            self._next_start[host] = start + interval_s
            return self._ids, start - now

    async def release(self, host: str, slot: int) -> None:
        async with self._cond:
            self._held.get(host, {}).pop(slot, None)
            self._cond.notify_all()


class _HeldSlot:
    def __init__(self, actor, host: str, slot: int):
        self.actor, self.host, self.slot = actor, host, slot

    def release(self) -> None:
        import ray
        try:
            ray.get(self.actor.release.remote(self.host, self.slot))
        except Exception:  # the gate is gone with its run: nothing left to release
            pass


class ClusterDomainGate:
    """`stages.download._DomainGate`'s interface over one named actor per Ray job, so
    `download.per_domain_concurrency` and `per_domain_interval_s` hold across every
    worker process and node of the run (a process runs one download task at a time)."""

    def __init__(self, actor):
        self.actor = actor

    def acquire(self, host: str, concurrency: int, interval_s: float):
        import time

        import ray
        slot, wait = ray.get(self.actor.acquire.remote(host, concurrency, interval_s))
        if wait > 0:
            time.sleep(wait)
        return _HeldSlot(self.actor, host, slot)


def start_domain_gate() -> None:
    """Start the run's gate actor from the driver, which owns it: it lives as long as the run."""
    import ray
    global _gate_handle
    try:
        # The driver keeps a handle: an actor with no handle left is destroyed.
        _gate_handle = ray.remote(num_cpus=0, max_concurrency=1000)(_DomainGateActor).options(
            name=GATE_ACTOR, get_if_exists=True).remote()
    except Exception as exc:  # never let the gate stop a run
        logging.getLogger("vico").warning("per-domain gate: per worker process only (%s)", exc)


def cluster_domain_gate():
    """The run's cluster-wide gate in a Ray worker; None outside Ray or when the driver started
    none (the download stage then keeps its per-process gate)."""
    try:
        import ray
        if not ray.is_initialized():
            return None
        return ClusterDomainGate(ray.get_actor(GATE_ACTOR))
    except Exception:
        return None


def ray_ready() -> bool:
    """Ray is imported and initialised in this process (a run's driver after `init_ray`). Never
    imports ray itself: the first import decides which interfaces a local Ray binds to."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
