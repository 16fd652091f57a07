"""Will the DAG fit the cluster? Checked by the driver before any stage starts.

An engine stage is an actor pool: its actors hold their CPUs (and GPUs) for
the whole run. If the pools take every CPU, the light stages' tasks (download,
frames, filter, questions) never get one and the run waits forever, sending
nothing. So before the DAG starts, the pools about to be created, plus one slot
for the largest light task, are compared with the cluster's resources; if they
don't fit, the run stops with one line that says what to change.

On a cluster we joined (`ray.address`, or a Ray job) an autoscaler may still add
nodes, so there it is a warning; on the embedded local Ray it is an error.
"""
from __future__ import annotations

from dataclasses import dataclass

from vico_pipeline.errors import RunError
from vico_pipeline.registry import stage_specs


@dataclass(frozen=True)
class Pool:
    stage: str
    actors: int
    cpus: float  # per actor
    gpus: float  # per actor


def planned_pools(config) -> list[Pool]:
    """The actor pools the DAG creates, at their starting size."""
    pools = []
    for spec in stage_specs():
        if spec.name == "caption" and config.caption.runner == "ray_data_llm":
            continue  # Ray Data's LLM processor sizes its own pools
        res = spec.resources(config)
        if not res.get("actor"):
            continue
        size = res.get("concurrency") or 1
        actors = size[0] if isinstance(size, (tuple, list)) else size
        pools.append(Pool(spec.name, int(actors), float(res["num_cpus"] or 0), float(res.get("num_gpus") or 0)))
    return pools


def light_slot(config) -> float:
    """CPUs of the largest task a light stage runs: one of them must always find room."""
    slots = [float(res["num_cpus"] or 0) for res in (spec.resources(config) for spec in stage_specs())
             if not res.get("actor")]
    return max(slots, default=1.0)


def _count(value: float) -> str:
    return f"{value:g}"


def shortfall(config, cluster: dict) -> str | None:
    """One line saying what does not fit in `cluster` (ray.cluster_resources()) and what to change; None if it fits."""
    pools = planned_pools(config)
    slot = light_slot(config)
    cpus = sum(p.actors * p.cpus for p in pools) + slot
    gpus = sum(p.actors * p.gpus for p in pools)
    have_cpus, have_gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    listing = ", ".join(f"{p.stage} {p.actors} x {_count(p.cpus)}" for p in pools)
    if cpus > have_cpus + 1e-9:
        # The summaries stage runs the clues engine: its share is clues.num_cpus.
        sections = dict.fromkeys({"summaries": "clues"}.get(p.stage, p.stage) for p in pools if p.cpus > 0)
        keys = " / ".join(f"{name}.num_cpus" for name in sections) or "the stages' num_cpus"
        return (f"the engine actor pools need {_count(cpus - slot)} CPUs ({listing}) plus {_count(slot)} for the "
                f"light stages, and Ray has {_count(have_cpus)}: the run would wait forever; lower {keys} "
                f"(an endpoint engine such as openai needs about 0.25) or give Ray more CPUs (ray.num_cpus)")
    if gpus > have_gpus + 1e-9:
        listing = ", ".join(f"{p.stage} {p.actors} x {_count(p.gpus)}" for p in pools if p.gpus)
        return (f"the engine actor pools need {_count(gpus)} GPUs ({listing}) and Ray has {_count(have_gpus)}: "
                f"lower replicas / num_gpus / tensor_parallel_size, or run where the GPUs are")
    return None


def check_resources(config, log) -> None:
    """Raise RunError (exit 2) when the DAG cannot fit the embedded local Ray; warn on a joined cluster."""
    import ray

    from vico_pipeline.runtime import cluster_address

    problem = shortfall(config, ray.cluster_resources())
    if problem is None:
        return
    if cluster_address(config.ray):
        log(f"warning: {problem} (unless an autoscaler adds nodes)")
        return
    raise RunError(problem)


__all__ = ["Pool", "planned_pools", "light_slot", "shortfall", "check_resources"]
