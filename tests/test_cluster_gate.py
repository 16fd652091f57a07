"""The per-domain download gate across worker processes: one named actor per run."""
from __future__ import annotations

import asyncio
import time

import pytest

from vico_pipeline import runtime
from vico_pipeline.config import RayConfig


@pytest.fixture(scope="module")
def ray_session():
    import ray

    runtime.init_ray(RayConfig(num_cpus=2, progress=False))  # the driver starts the run's gate
    yield ray
    ray.shutdown()


def _spans(ray, concurrency: int, interval_s: float, count: int = 4) -> list[tuple[float, float, int]]:
    @ray.remote(num_cpus=0.25)
    def download(index):
        import os
        import time as t

        from vico_pipeline.registry import stage_specs
        from vico_pipeline.config import load_config
        # Built the way the pipeline builds it in a worker: with the run's gate.
        stage = stage_specs()[0].build(load_config("configs/demo.yaml"), "/tmp/unused")
        assert isinstance(stage.gate, runtime.ClusterDomainGate)
        held = stage.gate.acquire("videos.example", concurrency, interval_s)
        start = t.time()
        t.sleep(0.4)
        end = t.time()
        held.release()
        return start, end, os.getpid()

    return sorted(ray.get([download.remote(i) for i in range(count)]))


def test_one_download_at_a_time_per_host_across_processes(ray_session):
    spans = _spans(ray_session, concurrency=1, interval_s=0.0)
    assert len({pid for _, _, pid in spans}) > 1  # several worker processes took part
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        assert start >= end - 0.01, spans  # never two at once


def test_starts_are_spaced_across_processes(ray_session):
    begun = time.time()
    spans = _spans(ray_session, concurrency=4, interval_s=0.3)
    # Four starts 0.3 s apart on one host: the last cannot come before 0.9 s after the first request
    # (a lower bound only: busy workers start late, never early). Without the shared gate each
    # process would start at once.
    assert max(s for s, _, _ in spans) - begun >= 3 * 0.3 - 0.01, [s - begun for s, _, _ in spans]


def test_a_slot_held_by_a_dead_worker_is_taken_back(monkeypatch):
    monkeypatch.setattr(runtime, "GATE_LEASE_S", 0.2)
    gate = runtime._DomainGateActor()

    async def scenario():
        await gate.acquire("h", 1, 0.0)  # never released: its worker died
        started = time.monotonic()
        slot, wait = await asyncio.wait_for(gate.acquire("h", 1, 0.0), timeout=30)
        return time.monotonic() - started, slot

    waited, slot = asyncio.run(scenario())
    assert slot == 2 and waited >= 0.2
