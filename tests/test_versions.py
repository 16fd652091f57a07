"""Versions: the manifest contract, no work for a complete fingerprint, per-stage reuse
when only the clue settings change, incremental manifests, the versions CLI."""
from __future__ import annotations

import glob
import json
import os

import pytest

from tests.test_versions_support import demo_config, demo_version, demo_videos, rows_by_id
from vico_pipeline import version_cli
from vico_pipeline.errors import RunError
from vico_pipeline.redact import redact
from vico_pipeline.run import run
from vico_pipeline.versions import list_versions, open_version

UPSTREAM = ("download", "subtitles", "frames", "filter", "caption", "summaries")
DOWNSTREAM = ("clues", "questions", "blind")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from vico_pipeline.config import RayConfig
    from vico_pipeline.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def v1(ray_session, tmp_path_factory):
    return demo_version(tmp_path_factory)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp())


def _stage_files(root: str, stages) -> dict[str, float]:
    return {p: os.stat(p).st_mtime_ns for s in stages
            for p in glob.glob(f"{root}/demo/_stages/{s}-*/**/*.parquet", recursive=True)}


def test_manifest_contract(v1):
    manifest = open_version(v1)
    assert list(manifest)[-1] == "status" and manifest["status"] == "complete"
    assert manifest["version"] == "v1" and len(manifest["fingerprint"]) == 16
    assert manifest["code_version"] and manifest["created"] <= manifest["finished"]
    for table in ("videos", "clips", "captions", "clues", "questions", "errors", "shards"):
        assert manifest["tables"][table]["bytes"] > 0
    assert manifest["tables"]["videos"]["rows"] == 2 and manifest["tables"]["questions"]["rows"] > 0
    for stage in (*UPSTREAM, *DOWNSTREAM, "shards"):
        stats = manifest["stages"][stage]
        assert set(stats) >= {"items_in", "items_out", "failed", "seconds"}
    assert manifest["stages"]["frames"]["items_in"] == 2 and manifest["stages"]["frames"]["items_out"] == 18  # 9 clips a 2-minute video
    assert manifest["reused"] == {}
    # the shard index matches the files
    from stages.shards import verify_shard
    assert {s["split"] for s in manifest["shards"]} == {"train", "val"}
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["tables"]["shards"]["rows"] == 2
    assert all(verify_shard(v1, s) for s in manifest["shards"])
    card = open(os.path.join(v1, "README.md")).read()
    assert "# demo v1" in card and "| questions |" in card and "event_order" in card
    assert manifest["config"]["output"]["root"]  # resolved config recorded


def test_secrets_are_redacted():
    plain = {"caption": {"api_key_env": "OPENAI_API_KEY", "max_tokens": 256, "base_url": "https://bob:hunter2@llm.example/v1"},
             "x": {"api_key": "sk-123", "password": "p", "nested": [{"token": "t"}]},
             "sources": {"manifest": "https://host/m.txt?token=abc&x=1"}}
    out = json.dumps(redact(plain))
    for secret in ("hunter2", "sk-123", '"p"', '"t"', "abc"):
        assert secret not in out
    assert "OPENAI_API_KEY" in out and "256" in out and "x=1" in out


def test_rerun_of_complete_fingerprint_does_nothing(v1, base):
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{v1}/**", recursive=True)}
    said = []
    again = run(demo_config(demo_videos(base), os.path.dirname(os.path.dirname(v1))), log=said.append)
    assert again == v1 and any("nothing to do" in s for s in said)
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{v1}/**", recursive=True)} == before
    assert [v["version"] for v in list_versions(os.path.dirname(v1))][:1] == ["v1"]


def test_clue_change_reruns_clues_questions_shards_only(v1, base):
    root = os.path.dirname(os.path.dirname(v1))
    upstream_before = _stage_files(root, UPSTREAM)
    assert upstream_before
    v2 = run(demo_config(demo_videos(base), root, "clues.max_clues=4"), log=lambda m: None)
    assert v2.endswith("/v2")
    manifest = open_version(v2)
    for stage in UPSTREAM:
        reused = manifest["reused"][stage]
        assert reused["version"] == "v1" and reused["all"] and manifest["stages"][stage]["cached"] == 2
    for stage in DOWNSTREAM:
        assert stage not in manifest["reused"] and manifest["stages"][stage]["cached"] == 0
    assert _stage_files(root, UPSTREAM) == upstream_before  # not one upstream part rewritten
    assert manifest["tables"]["clues"]["rows"] <= 8  # 2 videos x 4
    assert max(r["clue_index"] for r in rows_by_id(v2, "clues", ("video_id", "clue_index")).values()) < 4
    assert rows_by_id(v2, "captions", "clip_id") == rows_by_id(v1, "captions", "clip_id")
    # the same command again finds v2
    assert run(demo_config(demo_videos(base), root, "clues.max_clues=4"), log=lambda m: None) == v2

    diff = version_cli.diff_data(v1, "v2")
    assert diff["config"] == {"clues.max_clues": [8, 4]}
    assert diff["stages"]["frames"] == "same" and diff["stages"]["clues"] == "changed"
    assert set(diff["reused"]) == set(UPSTREAM)


def test_clue_only_change_runs_in_process_without_ray(v1, base):
    """Every heavy stage cached, only clues and questions to run: no Ray start-up (vico_pipeline/inline.py)."""
    import ray

    from stages.shards import verify_shard

    root = os.path.dirname(os.path.dirname(v1))
    upstream_before = _stage_files(root, UPSTREAM)
    ray.shutdown()
    said = []
    v = run(demo_config(demo_videos(base), root, "clues.max_clues=3"), log=said.append)
    assert not ray.is_initialized()
    assert any(s.startswith("ray: not started") and "clues for 2 videos" in s for s in said), said
    manifest = open_version(v)
    assert manifest["status"] == "complete"
    for stage in UPSTREAM:
        assert manifest["stages"][stage]["cached"] == 2
    for stage in DOWNSTREAM:
        assert manifest["stages"][stage]["cached"] == 0 and manifest["stages"][stage]["items_out"] > 0
    assert _stage_files(root, UPSTREAM) == upstream_before
    assert max(r["clue_index"] for r in rows_by_id(v, "clues", ("video_id", "clue_index")).values()) < 3
    assert all(verify_shard(v, s) for s in manifest["shards"])
    # a stage with work that is not light (a changed frame rate re-decodes) sends the run to Ray
    from vico_pipeline.inline import light_work
    from vico_pipeline.pipeline import stage_roots_for
    from stages.manifest import read_manifest
    config = demo_config(demo_videos(base), root, "frames.fps=0.5")
    assert light_work(read_manifest(config.sources.manifest), config, stage_roots_for(config)[0]) is None
    config = demo_config(demo_videos(base), root, "clues.max_clues=3", "ray.inline_max_videos=1")
    assert light_work(read_manifest(config.sources.manifest), config, stage_roots_for(config)[0]) is None


def test_added_video_is_the_only_one_processed(v1, base, tmp_path):
    from vico_pipeline.demo import make_demo_videos

    root = os.path.dirname(os.path.dirname(v1))
    extra = make_demo_videos(str(tmp_path / "more"), count=1, minutes=2, seed=7)
    manifest = tmp_path / "manifest.txt"
    lines = open(demo_videos(base)).read().splitlines() + [l for l in open(extra).read().splitlines() if not l.startswith("#")]
    manifest.write_text("\n".join(lines) + "\n")
    frames_before = _stage_files(root, ("frames",))
    v3 = run(demo_config(str(manifest), root, "dataset.version=more-videos"), log=lambda m: None)
    assert v3.endswith("/more-videos")
    m = open_version(v3)
    for stage in (*UPSTREAM, *DOWNSTREAM):
        assert m["stages"][stage]["items_in"] == 3 and m["stages"][stage]["cached"] == 2, stage
        assert m["reused"][stage]["videos"] == 2 and not m["reused"][stage]["all"]
    after = _stage_files(root, ("frames",))
    assert {p: t for p, t in after.items() if p in frames_before} == frames_before
    # One new part per part folder of the frames stage (its frames, and its shots since issue 19).
    folders = {os.path.dirname(p) for p in frames_before}
    new = [p for p in after if p not in frames_before]
    assert sorted(os.path.dirname(p) for p in new) == sorted(folders)
    assert m["tables"]["videos"]["rows"] == 3 and sum(s["rows"] for s in m["shards"]) == 3


def test_versions_cli(v1, capsys):
    dataset = os.path.dirname(v1)
    assert version_cli.main([dataset]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "complete" in out and open_version(v1)["fingerprint"] in out
    assert version_cli.main(["show", v1]) == 0
    assert "questions" in capsys.readouterr().out
    assert version_cli.main(["show", v1, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "complete"
    if os.path.isdir(os.path.join(dataset, "v2")):
        assert version_cli.main(["diff", v1, os.path.join(dataset, "v2")]) == 0
        out = capsys.readouterr().out
        assert "clues.max_clues: 8 -> 4" in out and "reused from v1" in out
    assert version_cli.main(["diff", v1]) == 2


def test_incomplete_version_is_never_taken_for_complete(v1, tmp_path):
    from vico_pipeline.export import export_llava
    from vico_pipeline.report import write_report

    dataset = tmp_path / "demo"
    half = dataset / "v1"
    os.makedirs(half / "questions")
    (half / ".claim.json").write_text('{"fingerprint": "x"}')
    (half / "manifest.json").write_text('{"status": "running"}')
    (dataset / "v2").mkdir()
    (dataset / "v2" / "manifest.json").write_text('{"status": "comp')  # torn write
    assert [v["status"] for v in list_versions(str(dataset))] == ["incomplete", "incomplete"]
    for folder in (half, dataset / "v2"):
        with pytest.raises(RunError, match="not a complete version"):
            open_version(str(folder))
        with pytest.raises(RunError):
            write_report(str(folder), str(tmp_path / "r.html"))
        with pytest.raises(RunError):
            export_llava(str(folder), str(tmp_path / "export"))
    assert version_cli.main(["show", str(half)]) == 2


# --------------------------------------------------------------------------- split and summary
def test_val_split_holds_the_fraction_to_one_video():
    from stages.shards import assign_splits

    ids = [f"video-{i:03d}" for i in range(6)]
    splits = assign_splits(ids, 0.34)
    assert sorted(splits.values()).count("val") == 2  # round(0.34 * 6), never 0 or 3
    for n in (1, 3, 10, 97):
        assert list(assign_splits(ids[:0] + [f"v{i}" for i in range(n)], 0.25).values()).count("val") == int(n * 0.25 + 0.5)
    assert assign_splits(reversed(ids), 0.34) == splits  # by video_id, whatever the order


def test_val_split_moves_only_at_the_boundary_when_videos_are_added():
    from stages.shards import assign_splits

    ids = [f"video-{i:03d}" for i in range(40)]
    before = assign_splits(ids, 0.2)
    after = assign_splits(ids + [f"new-{i}" for i in range(5)], 0.2)
    moved = [v for v in ids if before[v] != after[v]]
    assert len(moved) <= 5  # at most one video a change of val's size or a new video ranked before it
    assert list(after.values()).count("val") == 9


def test_summary_counts_add_up_and_splits_agree(v1):
    import pyarrow.dataset as pads

    from vico_pipeline.summary import run_summary, summary_line

    s = run_summary(v1)
    v = s["videos"]
    assert v["with_questions"] + v["without_questions"] + v["failed"] == v["total"]
    assert s["clips"]["kept"] + s["clips"]["dropped"] == s["clips"]["total"]
    assert s["questions"]["train"] + s["questions"]["val"] == s["questions"]["total"]
    line = summary_line(s)
    assert f"{v['total']} videos" in line or f"{v['total']} video:" in line
    assert "kept" in line and "dropped" in line and "failed" in line
    questions = pads.dataset(os.path.join(v1, "questions"), format="parquet").to_table(["video_id", "split"])
    shards = pads.dataset(os.path.join(v1, "shards"), format="parquet").to_table(["video_id", "split"])
    by_video = dict(zip(questions["video_id"].to_pylist(), questions["split"].to_pylist()))
    assert dict(zip(shards["video_id"].to_pylist(), shards["split"].to_pylist())) == by_video
    fraction = open_version(v1)["config"]["shards"]["val_fraction"]
    assert list(by_video.values()).count("val") == int(len(by_video) * fraction + 0.5)
