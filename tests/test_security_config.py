"""Names and engine sections checked before anything starts: one line, exit 2, nothing written."""
from __future__ import annotations

import os

import pytest

from tests.conftest import run_vico


@pytest.mark.parametrize("setting", ["dataset.version=../../victim", "dataset.name=../escape",
                                     "dataset.version=.hidden", "dataset.name=a/b", "dataset.version=v1 2"])
def test_names_that_could_leave_the_output_root_are_refused(tmp_path, setting):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    manifest = tmp_path / "m.txt"
    manifest.write_text("/nonexistent.mp4\n")
    proc = run_vico("run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
                    "--set", f"output.root={tmp_path / 'out' / 'root'}", "--set", setting)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("vico: error: config key 'dataset.")
    assert (victim / "keep.txt").read_text() == "mine" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, message", [
    (["caption.engine=openai", "caption.model=m", "caption.api_key_env=VICO_TEST_KEY_NEVER_SET"],
     "caption.api_key_env: environment variable VICO_TEST_KEY_NEVER_SET is not set"),
    (["caption.engine=openai", "caption.base_url=http://127.0.0.1:9/v1"], "caption.model: the openai engine needs a model name"),
    (["clues.engine=vllm"], "clues.model: the vllm engine needs a model name"),
])
def test_an_engine_that_cannot_be_built_is_one_line_before_ray(tmp_path, settings, message):
    manifest = tmp_path / "m.txt"
    manifest.write_text("/nonexistent.mp4\n")
    args = [a for s in settings for a in ("--set", s)]
    proc = run_vico("run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
                    "--set", f"output.root={tmp_path / 'out'}", *args, env={"VICO_TEST_KEY_NEVER_SET": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"vico: error: {message}"]
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "out" / "demo" / "v1")
