"""Where `vico run` runs: an embedded local Ray, or the cluster named by
`ray.address` / RAY_ADDRESS (the job server sets it inside a job)."""
from __future__ import annotations

import pytest

from vico_pipeline.cli import main as cli_main
from vico_pipeline.config import ConfigError, RayConfig
from vico_pipeline.runtime import cluster_address


def test_local_unless_an_address_is_given(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(RayConfig()) is None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # what the job server sets for a job's entrypoint
    assert cluster_address(RayConfig()) == "127.0.0.1:6379"
    assert cluster_address(RayConfig(address="auto")) == "auto"  # the config wins over the environment


def test_a_job_server_url_is_not_a_cluster_to_join(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ConfigError, match="vico submit"):
        cluster_address(RayConfig())


def test_run_with_a_job_server_url_is_one_line(monkeypatch, capsys, tmp_path):
    manifest = tmp_path / "m.txt"
    manifest.write_text("/nonexistent/video.mp4\n")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    code = cli_main(["run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
                     "--set", f"output.root={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("vico: error: RAY_ADDRESS=http://127.0.0.1:8265 is a job server")


def test_engine_pools_autoscale_between_replicas_and_max_replicas():
    from vico_pipeline.config import load_config
    from vico_pipeline.registry import stage_specs

    config = load_config("configs/cluster-s3.yaml", ["caption.replicas=2", "caption.max_replicas=6",
                                                     "clues.tensor_parallel_size=4"])
    res = {spec.name: spec.resources(config) for spec in stage_specs()}
    assert res["caption"]["actor"] and res["caption"]["concurrency"] == (2, 6) and res["caption"]["num_gpus"] == 1
    assert res["clues"]["concurrency"] == 1 and res["clues"]["num_gpus"] == 4  # one actor holds its TP group
    assert res["download"]["num_cpus"] == 0.5 and res["frames"]["num_cpus"] == 2


def test_outside_ray_the_stage_keeps_its_own_gate(monkeypatch):
    import ray

    from stages.download import _GATE
    from vico_pipeline.config import load_config
    from vico_pipeline.registry import stage_specs

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever other test modules left running
    assert stage_specs()[0].build(load_config("configs/demo.yaml"), "/tmp/unused").gate is _GATE
