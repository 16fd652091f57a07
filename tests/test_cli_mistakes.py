"""The documented mistakes, with every documented command that can make them: one line on stderr
naming what to do, exit status 2, never a traceback.

- a URI scheme whose package (extra) is missing: s3fs is installed here, so the child process gets
  a module on its path that fails to import as a missing package would;
- an output path that cannot be written: a path under a regular file (root ignores permission
  bits, so chmod would not stop these tests);
- a model engine whose model is neither a local folder nor in the Hugging Face cache, checked
  before Ray starts: offline, with a hub that has no such model (a loopback server), and with a
  hub that cannot be reached (a closed loopback port);
- `vico report` onto a file that holds another version's report.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import run_vico
from vico_pipeline import cli

S3_INSTALL = "pip install -e '.[s3]'"


def one_line(proc, code: int = 2) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def fake_version(root, dataset: str = "demo", name: str = "v1", fingerprint: str = "b1539f93" + "0" * 8) -> str:
    """A complete version folder with no table: enough for the commands to accept it."""
    path = root / dataset / name
    path.mkdir(parents=True)
    manifest = {"status": "complete", "version": name, "dataset": dataset, "fingerprint": fingerprint,
                "created": "2026-01-01T00:00:00+00:00", "config": {}, "tables": {}, "stages": {},
                "shards": []}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return str(path)


@pytest.fixture
def manifest(tmp_path) -> str:
    path = tmp_path / "manifest.txt"
    path.write_text(f"{tmp_path}/no-such-video.mp4\n")
    return str(path)


# --------------------------------------------------------------------------- a missing extra
def in_process(capsys, *args: str):
    """`vico ARGS` in this process (the matrices below; one real child process per mistake too)."""
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["vico", *args], code, captured.out, captured.err)


@pytest.fixture
def without_s3fs(tmp_path) -> dict:
    """The environment of a child process in which `import s3fs` fails as if it were not installed."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "s3fs.py").write_text("raise ModuleNotFoundError(\"No module named 's3fs'\", name='s3fs')\n")
    path = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


@pytest.fixture
def no_s3fs_here(monkeypatch):
    """The same in this process: the import fails, and fsspec forgets the class it may have loaded."""
    registry = importlib.import_module("fsspec.registry")  # the module (`fsspec.registry` is a mapping)

    monkeypatch.setitem(sys.modules, "s3fs", None)
    for scheme in ("s3", "s3a"):
        monkeypatch.delitem(registry._registry, scheme, raising=False)


def s3_commands(tmp_path, manifest: str) -> dict[str, list[str]]:
    version = fake_version(tmp_path / "local")
    return {
        "run output.root": ["run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
                            "--set", "output.root=s3://bucket/out"],
        "run sources.manifest": ["run", "configs/demo.yaml", "--set", "sources.manifest=s3://bucket/manifest.txt",
                                 "--set", f"output.root={tmp_path}/out"],
        "versions": ["versions", "s3://bucket/out/demo"],
        "versions show": ["versions", "show", "s3://bucket/out/demo/v1"],
        "report": ["report", "s3://bucket/out/demo/v1"],
        "report --out": ["report", version, "--out", "s3://bucket/report.html"],
        "export --out": ["export", version, "--out", "s3://bucket/export"],
    }


def test_a_missing_extra_is_one_line_with_its_install(tmp_path, manifest, no_s3fs_here, capsys):
    for name, args in s3_commands(tmp_path, manifest).items():
        line = one_line(in_process(capsys, *args))
        assert S3_INSTALL in line and "s3fs" in line and "s3://bucket" in line, (name, line)


def test_a_missing_extra_in_a_real_vico_run(tmp_path, manifest, without_s3fs):
    args = s3_commands(tmp_path, manifest)["run output.root"]
    line = one_line(run_vico(*args, env=without_s3fs))
    assert S3_INSTALL in line and "s3://bucket/out" in line


# --------------------------------------------------------------------------- an unwritable output
def unwritable_commands(tmp_path, manifest: str, bad: str) -> dict[str, list[str]]:
    version = fake_version(tmp_path / "local")
    return {
        "run": ["run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}", "--set", f"output.root={bad}"],
        "report --out": ["report", version, "--out", f"{bad}/report.html"],
        "export --out": ["export", version, "--out", bad],
        "demo-videos": ["demo-videos", bad, "--count", "1", "--minutes", "0.1"],
        "train": ["train", "configs/train-tiny.yaml", "--set", f"train.output={bad}"],
        "eval": ["eval", "configs/eval-tiny.yaml", "--set", f"eval.output={bad}"],
    }


@pytest.fixture
def bad(tmp_path) -> str:
    """A folder path under a regular file: no one, root included, can make it."""
    (tmp_path / "a-file").write_text("not a folder")
    return str(tmp_path / "a-file" / "out")


def test_an_unwritable_output_is_one_line_naming_the_path(tmp_path, manifest, bad, capsys):
    pytest.importorskip("torch")  # vico train / eval need the model extra before anything else
    for name, args in unwritable_commands(tmp_path, manifest, bad).items():
        line = one_line(in_process(capsys, *args))
        assert bad in line and "not writable" in line, (name, line)
    assert os.path.isfile(tmp_path / "a-file")  # nothing was written in its place


@pytest.mark.parametrize("command", ["run", "report --out"])
def test_an_unwritable_output_in_a_real_vico(tmp_path, manifest, bad, command):
    line = one_line(run_vico(*unwritable_commands(tmp_path, manifest, bad)[command]))
    assert bad in line and "not writable" in line


def test_writable_probe_creates_the_folder_and_leaves_nothing(tmp_path):
    from vico_pipeline import storage

    assert storage.unwritable(str(tmp_path / "new" / "folder")) is None
    assert os.listdir(tmp_path / "new" / "folder") == []  # the probe file is gone
    (tmp_path / "f").write_text("x")
    assert "a file is in the way" in storage.unwritable(str(tmp_path / "f" / "sub"))


# --------------------------------------------------------------------------- a model that is not here
MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"  # configs/local.yaml's caption model


def local_run(tmp_path, manifest: str) -> list[str]:
    return ["run", "configs/local.yaml", "--set", f"sources.manifest={manifest}", "--set", f"output.root={tmp_path}/out"]


def test_offline_without_the_model_stops_before_ray(tmp_path, manifest):
    pytest.importorskip("transformers")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    line = one_line(run_vico(*local_run(tmp_path, manifest), env=env))
    assert MODEL in line and f"hf download {MODEL}" in line and f"huggingface-cli download {MODEL}" in line
    assert "HF_HUB_OFFLINE" in line and "caption.model" in line
    assert not os.path.exists(tmp_path / "out" / "local" / "v1")  # no version claimed, no Ray started


class _NoSuchModel(BaseHTTPRequestHandler):
    """A hub that knows no model."""

    def do_GET(self):
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_model_the_hub_does_not_have_is_one_line(tmp_path, manifest):
    pytest.importorskip("transformers")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
               "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
        line = one_line(run_vico(*local_run(tmp_path, manifest), env=env))
    finally:
        server.shutdown()
        server.server_close()
    assert MODEL in line and "has no model named" in line and f"hf download {MODEL}" in line


def test_a_hub_out_of_reach_is_one_line(tmp_path, manifest):
    pytest.importorskip("transformers")
    with socket.socket() as sock:  # a port nothing listens on: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    line = one_line(run_vico(*local_run(tmp_path, manifest), env=env))
    assert MODEL in line and "cannot be reached" in line and f"hf download {MODEL}" in line


def test_a_local_folder_or_a_cached_model_passes(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import huggingface_hub.constants as hf_constants

    from vico_pipeline.config import load_config
    from vico_pipeline.engines.base import EngineError
    from vico_pipeline.engines.hub import check_model

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--org--cached" / "refs").mkdir()
    (cache / "models--org--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    for model in ("org/cached", str(tmp_path)):
        check_model(load_config(None, ["caption.engine=transformers", f"caption.model={model}"]).caption, "caption")
    with pytest.raises(EngineError, match="org/absent is not in the local Hugging Face cache"):
        check_model(load_config(None, ["caption.engine=transformers", "caption.model=org/absent"]).caption, "caption")
    with pytest.raises(EngineError, match="no model folder at /no/such/model"):
        check_model(load_config(None, ["clues.engine=transformers", "clues.model=/no/such/model"]).clues, "clues")
    # On a cluster the workers' disks are not the driver's: nothing to check here.
    check_model(load_config(None, ["caption.engine=vllm", "caption.model=org/absent"]).caption, "caption", on_cluster=True)


# --------------------------------------------------------------------------- one report per version
def test_one_report_per_version(tmp_path, monkeypatch, capsys):
    a = fake_version(tmp_path / "root-a", fingerprint="a1539f93" + "1" * 8)
    b = fake_version(tmp_path / "root-b", fingerprint="b1539f93" + "2" * 8)  # also demo/v1
    monkeypatch.chdir(tmp_path)
    first, second = in_process(capsys, "report", a), in_process(capsys, "report", b)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    out = str(tmp_path / "demo-v1-a1539f93-report.html")
    assert first.stdout.strip() == out
    assert second.stdout.strip() == str(tmp_path / "demo-v1-b1539f93-report.html")
    a_page = open(out).read()
    # The same version's report is written again; another version's is refused without --force.
    assert in_process(capsys, "report", a, "--out", out).returncode == 0
    line = one_line(in_process(capsys, "report", b, "--out", out))
    assert out in line and "another version" in line and "--force" in line
    assert open(out).read() == a_page
    assert in_process(capsys, "report", b, "--out", out, "--force").returncode == 0
    assert "b1539f93" in open(out).read()
    # A file that is no report at all is not overwritten either.
    (tmp_path / "notes.html").write_text("<p>my notes</p>")
    line = one_line(in_process(capsys, "report", a, "--out", str(tmp_path / "notes.html")))
    assert "not a vico report" in line and (tmp_path / "notes.html").read_text() == "<p>my notes</p>"
