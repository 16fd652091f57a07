"""The head start (vico_pipeline/headstart.py): the first video's download and decode while Ray
starts. It must make the same version as a run without it, count its work as this run's, stop
cleanly when the run fails or is interrupted, and leave no process behind."""
from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time

import pyarrow.parquet as pq
import pytest

from stages.manifest import read_manifest
from tests.procs import pids_with_env
from vico_pipeline import headstart, layout, runtime
from vico_pipeline.config import load_config
from vico_pipeline.demo import make_demo_videos
from vico_pipeline.pipeline import DownloadRunner, StageRunner, download_unit, stage_roots_for
from vico_pipeline.registry import stage_specs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_video(tmp_path_factory):
    """A manifest naming one 1-minute demo video (5 clips of 14 s)."""
    return make_demo_videos(str(tmp_path_factory.mktemp("headstart")), count=1, minutes=1.0, progress=False)


def _config(manifest: str, out: str, *more: str):
    return load_config(os.path.join(REPO, "configs/demo.yaml"),
                       [f"sources.manifest={manifest}", f"output.root={out}", *more])


@pytest.fixture
def no_ray_yet(monkeypatch):
    """As in a fresh `vico run`: Ray not started (another test may have started it in this process)."""
    monkeypatch.setattr(runtime, "ray_ready", lambda: False)


def test_the_head_start_writes_the_dags_parts_and_hands_on_their_stats(one_video, tmp_path, no_ray_yet):
    config = _config(one_video, str(tmp_path / "out"))
    rows = read_manifest(config.sources.manifest)
    roots, _ = stage_roots_for(config)
    with headstart.HeadStart(rows, config, roots) as early:
        done = early.result()
    assert early.seconds is not None and early.seconds > 0
    video_id = download_unit(rows[0]["url"])  # a file is one video: the download unit is its id
    download_part = layout.part_uri(roots["download"], video_id)
    frames_part = layout.part_uri(roots["frames"], video_id)
    assert set(done) == {download_part, frames_part}
    assert done[frames_part]["rows"] == 5 and done[frames_part]["errors"] == 0 and "seconds" in done[frames_part]
    assert pq.read_table(frames_part).num_rows == 5

    # The DAG's runners find the parts: with the head start's stats they report this run's work...
    specs = {spec.name: spec for spec in stage_specs()}
    download = DownloadRunner(specs["download"], config, roots["download"])
    frames = StageRunner(specs["frames"], config, roots["frames"])
    row = download(rows[0], done)[0]
    assert json.loads(row["stats"])["download"] == done[download_part]
    row = frames(row, done)
    assert json.loads(row["stats"])["frames"] == done[frames_part]
    assert json.loads(row["refs"])["frames"] == frames_part
    # ...and without them (a later run, or a part found before this one) a cached part.
    row = frames(download(rows[0])[0])
    assert json.loads(row["stats"])["frames"] == {"cached": True}


def test_a_head_start_finds_cached_parts_and_claims_none_of_them(one_video, tmp_path, no_ray_yet):
    config = _config(one_video, str(tmp_path / "out"))
    rows = read_manifest(config.sources.manifest)
    roots, _ = stage_roots_for(config)
    with headstart.HeadStart(rows, config, roots) as early:
        assert early.result()
    with headstart.HeadStart(rows, config, roots) as again:  # a resumed run: every part already there
        assert again.result() == {}


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.requests.append(time.monotonic())
        self.send_error(503)

    def log_message(self, *args):
        pass


def test_a_source_that_may_come_back_is_tried_once_and_left_to_the_dag(tmp_path, no_ray_yet):
    """503 with retries configured: the head start asks once, writes no part and claims nothing,
    so the DAG retries it with its backoff while the progress table shows it (retrying here held
    the whole run behind a blank terminal)."""
    _Unavailable.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"http://127.0.0.1:{server.server_address[1]}/video.mp4\n")
    try:
        config = _config(str(manifest), str(tmp_path / "out"), "download.allowed_networks=[127.0.0.0/8]",
                         "download.retries=5", "download.backoff_s=30")
        rows = read_manifest(config.sources.manifest)
        roots, _ = stage_roots_for(config)
        with headstart.HeadStart(rows, config, roots) as early:
            done = early.result()
    finally:
        server.shutdown()
        server.server_close()
    # One attempt of the stage (yt-dlp's own request retry inside it may ask twice), not 6 attempts.
    assert done == {} and 1 <= len(_Unavailable.requests) <= 2, _Unavailable.requests
    unit = download_unit(rows[0]["url"])
    assert not os.path.exists(layout.part_uri(roots["download"], unit))
    assert not os.path.exists(layout.errors_uri(roots["download"], unit))


def test_no_head_start_when_off_or_when_ray_is_up(one_video, tmp_path, monkeypatch):
    config = _config(one_video, str(tmp_path / "out"), "ray.head_start_videos=0")
    rows = read_manifest(config.sources.manifest)
    roots, _ = stage_roots_for(config)
    with headstart.HeadStart(rows, config, roots) as early:
        assert early.result() == {} and early.seconds is None
    monkeypatch.setattr(runtime, "ray_ready", lambda: True)
    with headstart.HeadStart(rows, _config(one_video, str(tmp_path / "out")), roots) as early:
        assert early.result() == {} and early.seconds is None
    assert not os.path.exists(tmp_path / "out")


def test_an_interrupted_head_start_stops_its_decode_and_writes_no_half_part(one_video, tmp_path, no_ray_yet,
                                                                             monkeypatch):
    """Ctrl-C (or a failed Ray start) while the first video decodes: the decode stops at the next clip."""
    config = _config(one_video, str(tmp_path / "out"))
    rows = read_manifest(config.sources.manifest)
    roots, _ = stage_roots_for(config)
    first_clip = threading.Event()
    until = headstart._until

    def held_after_the_first_clip(stop, clips):
        for clip in until(stop, clips):
            first_clip.set()
            stop.wait(60)  # the decode is mid-video until the run stops (deterministic, no race)
            yield clip

    monkeypatch.setattr(headstart, "_until", held_after_the_first_clip)
    with pytest.raises(KeyboardInterrupt):
        with headstart.HeadStart(rows, config, roots) as early:
            assert first_clip.wait(120)
            # Ray's start on the main thread comes first: the head start's thread is niced.
            assert os.getpriority(os.PRIO_PROCESS, early.thread.native_id) == \
                os.getpriority(os.PRIO_PROCESS, 0) + headstart.NICENESS or \
                os.getpriority(os.PRIO_PROCESS, early.thread.native_id) == 19
            raise KeyboardInterrupt
    assert not early.thread.is_alive()
    video_id = download_unit(rows[0]["url"])
    assert os.path.exists(layout.part_uri(roots["download"], video_id))  # finished before the stop: kept
    assert not os.path.exists(layout.part_uri(roots["frames"], video_id))
    assert list(early.done) == [layout.part_uri(roots["download"], video_id)]
    assert early.error is None  # a stop is not an error


@pytest.mark.slow
def test_a_run_with_a_head_start_makes_the_same_version_as_one_without(one_video, tmp_path, vico):
    """Three ways to one version of one file: on Ray with the head start, on Ray without it, and
    the default, which runs a one-file run without a model in this process (no Ray at all)."""
    modes = {"head_start": ["ray.inline_one_file=false", "ray.head_start_videos=1"],
             "none": ["ray.inline_one_file=false", "ray.head_start_videos=0"],
             "in_process": []}
    versions, said = {}, {}
    for mode, settings in modes.items():
        out = tmp_path / f"out-{mode}"
        proc = vico("run", "configs/demo.yaml", "--set", f"sources.manifest={one_video}", "--set", f"output.root={out}",
                    "--set", "ray.num_cpus=2", *[a for s in settings for a in ("--set", s)],
                    env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        assert proc.returncode in (0, 3), proc.stderr
        versions[mode], said[mode] = proc.stdout.strip().splitlines()[-1], proc.stderr
    assert "starting Ray…" in said["head_start"] and "starting Ray…" in said["none"]
    assert "starting Ray…" not in said["in_process"] and "ray: not started; one file" in said["in_process"]
    assert re.search(r"frames\s+1/1\s+videos.*done", said["in_process"])  # its progress lines, as on Ray
    manifests = {k: json.load(open(os.path.join(v, "manifest.json"))) for k, v in versions.items()}
    off = manifests["none"]
    assert manifests["head_start"]["phases_s"]["head_start"] > 0 and "head_start" not in off["phases_s"]
    for mode in ("head_start", "in_process"):
        on = manifests[mode]
        assert on["fingerprint"] == off["fingerprint"] and on["stage_fingerprints"] == off["stage_fingerprints"]
        assert on["reused"] == off["reused"] == {}
        for stage in off["stages"]:  # the head start's work counted as this run's, not as cached parts
            for key in ("items_in", "items_out", "failed", "cached", "error_types"):
                assert on["stages"][stage].get(key) == off["stages"][stage].get(key), (mode, stage, key)
        assert on["stages"]["frames"]["seconds"] > 0
        assert on["tables"].keys() == off["tables"].keys()
        for table in off["tables"]:
            a = pq.read_table(layout.table_dir(versions[mode], table))
            b = pq.read_table(layout.table_dir(versions["none"], table))
            key = [c for c in ("clip_id", "question_id", "clue_id", "video_id") if c in b.column_names][:1]
            if key:
                a, b = a.sort_by([(key[0], "ascending")]), b.sort_by([(key[0], "ascending")])
            timing = [c for c in b.column_names if c.endswith("latency_s")]  # wall time of a request: never equal
            a, b = a.drop_columns(timing), b.drop_columns(timing)
            assert a.equals(b), (mode, table)


def test_one_file_runs_in_process_only_without_models_urls_or_a_cluster(one_video, monkeypatch):
    from vico_pipeline.inline import one_file_work

    rows = read_manifest(one_video)
    config = _config(one_video, "/tmp/unused")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert one_file_work(rows, config) and set(one_file_work(rows, config)) >= {"download", "frames", "caption"}
    two = rows + [{**rows[0], "url": rows[0]["url"] + ".copy.mp4"}]
    url = [{**rows[0], "url": "https://example.com/watch?v=x"}]  # may be a playlist of many videos
    assert one_file_work(two, config) is None and one_file_work(url, config) is None
    for more in (["ray.inline_one_file=false"], ["ray.inline_max_videos=0"], ["ray.address=127.0.0.1:6379"],
                 ["caption.engine=openai", "caption.model=m", "caption.base_url=http://127.0.0.1:9/v1"]):
        assert one_file_work(rows, _config(one_video, "/tmp/unused", *more)) is None, more


def test_a_mistake_found_after_ray_starts_is_one_line_and_leaves_no_process(one_video, tmp_path, vico):
    """check_resources runs while the head start decodes: exit 2, one line, Ray and ffmpeg gone."""
    marker = f"VICO_TEST_HEADSTART={tmp_path}"
    proc = vico("run", "configs/demo.yaml", "--set", f"sources.manifest={one_video}",
                "--set", f"output.root={tmp_path / 'out'}", "--set", "ray.num_cpus=2",
                "--set", "caption.engine=openai", "--set", "caption.model=m",
                "--set", "caption.base_url=http://127.0.0.1:9/v1", "--set", "caption.num_cpus=2",
                env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VICO_TEST_HEADSTART": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vico: error:")]
    assert len(errors) == 1 and "CPUs" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    deadline = time.monotonic() + 30  # Ray's processes end with the driver; give them a moment
    while pids_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pids_with_env(marker) == []


def test_full_speed_gives_the_head_starts_decode_back_its_niceness(one_video, tmp_path, no_ray_yet):
    """Niced while Ray starts; once Ray is up (`full_speed`), its thread and its ffmpeg run at the
    run's own niceness (lowering a niceness needs root: CI and this machine run as root)."""
    if os.geteuid() != 0:
        pytest.skip("lowering a niceness needs root")
    config = _config(one_video, str(tmp_path / "out"))
    rows = read_manifest(config.sources.manifest)
    roots, _ = stage_roots_for(config)
    seen = []
    with headstart.HeadStart(rows, config, roots) as early:
        while early.native_id is None:
            time.sleep(0.01)
        seen.append(os.getpriority(os.PRIO_PROCESS, early.native_id))
        early.full_speed()
        seen.append(os.getpriority(os.PRIO_PROCESS, early.native_id))
        children = headstart._children()
        seen.append({os.getpriority(os.PRIO_PROCESS, pid) for pid in children if os.path.exists(f"/proc/{pid}")})
        early.result()
    own = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert seen[0] == own + headstart.NICENESS or seen[0] == 19
    assert seen[1] == own and seen[2] <= {own}
