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
