"""A user's mistake ends with one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import pytest

from stages.download import DownloadStage
from vico_pipeline.config import load_config


def _one_line_error(proc, *words):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_config_file(vico):
    _one_line_error(vico("run", "no/such/config.yaml"), "no/such/config.yaml")


def test_unknown_key(vico):
    _one_line_error(vico("run", "configs/demo.yaml", "--set", "clips.secnds=10"), "clips.secnds")


def test_wrong_type(vico):
    _one_line_error(vico("run", "configs/demo.yaml", "--set", "clips.seconds=abc"), "clips.seconds")


def test_missing_manifest(vico, tmp_path):
    _one_line_error(vico("run", "configs/demo.yaml", "--set", f"sources.manifest={tmp_path}/none.txt",
                         "--set", f"output.root={tmp_path}"), "manifest not found")


def test_empty_manifest(vico, tmp_path):
    (tmp_path / "m.txt").write_text("# nothing but a comment\n\n")
    _one_line_error(vico("run", "configs/demo.yaml", "--set", f"sources.manifest={tmp_path}/m.txt",
                         "--set", f"output.root={tmp_path}"), "lists no sources")


def test_yaml_error_names_its_line(vico, tmp_path):
    (tmp_path / "bad.yaml").write_text("dataset:\n  name: demo\n clips: 3\n")  # line 3 is indented one space
    _one_line_error(vico("run", str(tmp_path / "bad.yaml")), "not valid YAML", "at line 3, column 2")


def test_set_overrides_are_typed():
    config = load_config("configs/demo.yaml", ["clips.seconds=10", "questions.tasks=[event_order]"])
    assert config.clips.seconds == 10.0 and config.questions.tasks == ["event_order"]


@pytest.mark.parametrize("source", ["relative/video.mp4", "/abs/video.mp4", "file:///abs/video.mp4"])
def test_local_sources_need_allow_local(source):
    config = load_config("configs/demo.yaml", ["sources.allow_local=false"])
    rows = list(DownloadStage(config, media_root="/tmp/unused").process({"url": source, "line": 1}))
    assert len(rows) == 1 and rows[0].error_type == "local_not_allowed"
