"""The command line a user lives in: `--json` anywhere, help texts, the model extra's install line,
`vico train --resume`, version listings that skip what is not a version."""
from __future__ import annotations

import json
import os
import sys

import pytest

from vico_pipeline import cli, version_cli
from vico_pipeline.versions import list_versions


def _version(folder, name: str, fingerprint: str, max_clues: int) -> str:
    path = folder / name
    path.mkdir(parents=True)
    manifest = {"status": "complete", "version": name, "dataset": "d", "fingerprint": fingerprint,
                "config": {"clues": {"max_clues": max_clues}}, "tables": {"questions": {"rows": max_clues, "bytes": 1}},
                "stages": {}, "stage_fingerprints": {}, "shards": []}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return str(path)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "d"
    _version(root, "v1", "aaa", 8)
    _version(root, "v2", "bbb", 4)
    (root / "v1-report.html").write_text("<html></html>")  # what `vico report` used to leave here
    (root / "notes.txt").write_text("a user's notes")
    return root


@pytest.mark.parametrize("words", [["show", "{v1}", "--json"], ["--json", "show", "{v1}"], ["show", "--json", "{v1}"]])
def test_versions_show_json_in_any_position(vico, dataset, words):
    proc = vico("versions", *[w.format(v1=dataset / "v1") for w in words])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fingerprint"] == "aaa"


def test_versions_diff_and_list_json(vico, dataset):
    proc = vico("versions", "diff", str(dataset / "v1"), "v2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"] == {"clues.max_clues": [8, 4]}
    proc = vico("versions", "--json", str(dataset))
    assert [row["version"] for row in json.loads(proc.stdout)] == ["v1", "v2"]


@pytest.mark.parametrize("words", [["--json", "versions", "{root}"], ["versions", "{root}", "--json"],
                                   ["--json", "versions", "show", "{root}/v1"], ["versions", "--json", "diff", "{root}/v1", "v2"]])
def test_json_before_the_command_too(dataset, words, capsys):
    """`vico --json versions output/demo`: --json anywhere on the line, as the README says."""
    assert cli.main([w.format(root=dataset) for w in words]) == 0
    json.loads(capsys.readouterr().out)  # one JSON document


def test_diff_leaves_out_display_only_keys(tmp_path):
    root = tmp_path / "d"
    for name, progress, every in (("v1", False, 5.0), ("v2", True, 1.0)):
        path = _version(root, name, name, 8)
        manifest = json.load(open(os.path.join(path, "manifest.json")))
        manifest["config"]["ray"] = {"progress": progress, "status_every_s": every, "num_cpus": 2 if progress else 1}
        json.dump(manifest, open(os.path.join(path, "manifest.json"), "w"))
    diff = version_cli.diff_data(str(root / "v1"), str(root / "v2"))
    assert diff["config"] == {"ray.num_cpus": [1, 2]}  # ray.progress and ray.status_every_s only change the display


def test_listing_skips_files_beside_the_versions(dataset, capsys):
    assert [v["version"] for v in list_versions(str(dataset))] == ["v1", "v2"]
    assert version_cli.main([str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "report" not in out and "notes" not in out and "incomplete" not in out


def test_every_option_has_help():
    parser = cli._parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest not in ("help",) and action.option_strings:
                assert action.help, f"vico {name} {action.option_strings[0]} has no help text"
        if name != "submit":  # submit prints a job id, not a summary
            assert any(a.dest == "json" for a in sub._actions), name
    assert all(a.help for a in commands["demo-videos"]._actions)


@pytest.mark.parametrize("command,section", [("train", "train."), ("eval", "eval."), ("run", "clips.")])
def test_set_example_names_a_key_of_the_command(command, section):
    sub = cli._parser()._subparsers._group_actions[0].choices[command]
    (overrides,) = [a for a in sub._actions if a.dest == "overrides"]
    assert f"--set {section}" in overrides.help


@pytest.mark.parametrize("command", ["train", "eval"])
def test_missing_model_extra_is_one_line_with_the_install(command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were not installed
    assert cli.main([command, "configs/train-tiny.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "torch" in err[0] and "pip install -e '.[model]'" in err[0]


def test_model_extra_is_named_in_pyproject():
    import tomllib

    extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
    assert {"model", "transformers", "s3", "cluster", "vllm"} <= set(extras)
    model = " ".join(extras["model"])
    assert all(package in model for package in cli.MODEL_PACKAGES)


def test_train_resume_flag_and_json(monkeypatch, capsys, tmp_path):
    pytest.importorskip("torch")
    from vico_pipeline.model import cli as model_cli

    seen = {}
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')

    def fake_train(config):
        seen["resume"] = config.train.resume
        print("step 2/2 loss 1.5")  # what training prints goes to stderr under --json
        print(out)
        return 0

    monkeypatch.setattr(model_cli, "train_main", fake_train)
    assert cli.main(["train", "configs/train-tiny.yaml", "--resume", "--json"]) == 0
    captured = capsys.readouterr()
    assert seen["resume"] is True
    result = json.loads(captured.out)
    assert result["output"] == str(out) and result["last_metrics"] == {"step": 2, "loss": 1.5}
    assert "step 2/2" in captured.err
    assert cli.main(["train", "configs/train-tiny.yaml"]) == 0
    assert seen["resume"] is False


def test_demo_videos_and_report_json(tmp_path, capsys, monkeypatch):
    import vico_pipeline.demo as demo
    import vico_pipeline.report as report

    def fake_demo(directory, count, minutes, seed):
        (tmp_path / "manifest.txt").write_text("# demo\n/a.mp4\n/b.mp4\n")
        return str(tmp_path / "manifest.txt")

    monkeypatch.setattr(demo, "make_demo_videos", fake_demo)
    assert cli.main(["demo-videos", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["videos"] == ["/a.mp4", "/b.mp4"]
    monkeypatch.setattr(report, "write_report", lambda version, out, force=False: str(tmp_path / "r.html"))
    assert cli.main(["report", str(tmp_path / "v1"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == str(tmp_path / "r.html")
