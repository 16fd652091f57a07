"""Caption stage through the pipeline vs the same engine called directly on the same clips.

    python bench/caption.py [--videos 3] [--minutes 2] [--engines openai,transformers]

Both sides caption the same kept clips of the same demo videos with the same engine
settings. "pipeline": the Ray Data DAG with download, frames and filter cached, so the
timed run is the caption stage (and the cheap template clues and questions after it)
in its actor, reading frames from part files. "direct": one process calls the engine
on the clips, batch by batch, nothing else. The ratio of throughputs is
pipeline / direct (goal >= 0.9). Engines here (no GPU, no hub): `openai` against
`transformers serve` on 127.0.0.1 serving a tiny random LLaVA, and `transformers` in
process with the same model. Prints one JSON object a line and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start_server(model: str, workdir: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = os.path.join(workdir, "empty-hub")
    os.makedirs(hub, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=hub, TRANSFORMERS_VERBOSITY="error")
    log = open(os.path.join(workdir, "serve.log"), "wb")
    cli = os.path.join(os.path.dirname(sys.executable), "transformers")
    proc = subprocess.Popen([cli, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    for _ in range(360):
        if proc.poll() is not None:
            raise RuntimeError("transformers serve exited; see " + log.name)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("transformers serve did not start")


def kept_clips(version_root: str) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    kept = {r["clip_id"] for r in pq.read_table(os.path.join(version_root, "filtered")).to_pylist() if r["kept"]}
    clips = pq.read_table(os.path.join(version_root, "clips"),
                          columns=["clip_id", "video_id", "clip_index", "start_s", "end_s", "caption_frames"]).to_pylist()
    out: dict[str, list[dict]] = {}
    for clip in sorted(clips, key=lambda c: (c["video_id"], c["clip_index"])):
        if clip["clip_id"] in kept:
            out.setdefault(clip["video_id"], []).append(clip)
    return out


def direct(config, videos: dict[str, list[dict]]) -> tuple[int, float, int]:
    """The engine alone: (clips, seconds, completion tokens)."""
    from stages.caption import CAPTION_SCHEMA_JSON, CaptionStage, caption_prompt
    from vico_pipeline.engines import Request, build_engine

    engine = build_engine(config.caption, "caption")
    size = CaptionStage(config).batch_size()
    count, tokens = 0, 0
    started = time.perf_counter()
    for clips in videos.values():
        for i in range(0, len(clips), size):
            batch = clips[i:i + size]
            results = engine([Request(caption_prompt(config.caption.prompt_version, c), images=c["caption_frames"],
                                      json_schema=CAPTION_SCHEMA_JSON) for c in batch])
            count += len(results)
            tokens += sum(r.completion_tokens for r in results)
    seconds = time.perf_counter() - started
    engine.close()
    return count, seconds, tokens


def through_pipeline(config, manifest_rows) -> tuple[int, float, int, float]:
    """The DAG with upstream stages cached: (clips answered, seconds, tokens, caption-stage seconds).

    A clip is answered when it has a caption row or a caption error row (the tiny model's
    random text is mostly rejected as unreadable: the engine did the work all the same).
    """
    from stages.base import ERRORS_SCHEMA
    from vico_pipeline import storage
    from vico_pipeline.pipeline import run_stages, stage_roots_for

    roots, _ = stage_roots_for(config)
    started = time.perf_counter()
    refs = run_stages(manifest_rows, config, roots, progress=False)
    seconds = time.perf_counter() - started
    parts = [json.loads(r["refs"]).get("caption") for r in refs]
    table = storage.read_parquet([p for p in parts if p])
    error_parts = sorted({u for r in refs for u in json.loads(r["error_parts"]) if "/caption-" in u})
    errors = storage.read_parquet(error_parts, ERRORS_SCHEMA) if error_parts else None
    answered = table.num_rows + (errors.num_rows if errors is not None else 0)
    stage_s = sum(json.loads(r["stats"]).get("caption", {}).get("seconds", 0.0) for r in refs)
    return answered, seconds, int(sum(table["completion_tokens"].to_pylist())), stage_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--engines", default="openai,transformers")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from stages.manifest import read_manifest
    from vico_pipeline.config import load_config
    from vico_pipeline.demo import make_demo_videos
    from vico_pipeline.engines.tiny import build_tiny_vlm
    from vico_pipeline.runtime import configure_data_context, init_ray
    from vico_pipeline.run import run

    workdir = args.workdir or tempfile.mkdtemp(prefix="vico-bench-caption-")
    manifest = make_demo_videos(os.path.join(workdir, "videos"), count=args.videos, minutes=args.minutes,
                                progress=False)
    model = build_tiny_vlm(os.path.join(workdir, "tiny-llava"))
    server, base_url = start_server(model, workdir)
    rows = []
    try:
        base = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.yaml"),
                           [f"sources.manifest={manifest}", f"output.root={os.path.join(workdir, 'out')}",
                            "ray.progress=false"])
        init_ray(base.ray)
        configure_data_context(False)
        version = run(base, log=lambda m: None)  # download, frames, filter: cached for the timed runs
        videos = kept_clips(version)
        manifest_rows = read_manifest(manifest)
        for kind in args.engines.split(","):
            config = base.model_copy(deep=True)
            section = config.caption
            section.engine, section.model, section.max_tokens = kind, model, args.max_tokens
            section.batch_size, section.concurrency, section.replicas, section.num_cpus = 4, 4, 1, 0.5
            if kind == "openai":
                section.base_url = base_url
            else:
                section.device = "cpu"
            direct(config, {k: v[:2] for k, v in list(videos.items())[:1]})  # warm-up: load, first request
            n_direct, s_direct, t_direct = direct(config, videos)
            n_pipe, s_pipe, t_pipe, stage_s = through_pipeline(config, manifest_rows)
            row = {"engine": kind, "clips": n_direct, "direct_s": round(s_direct, 2),
                   "direct_clips_per_s": round(n_direct / s_direct, 3),
                   "pipeline_clips": n_pipe, "pipeline_s": round(s_pipe, 2),
                   "pipeline_clips_per_s": round(n_pipe / s_pipe, 3),
                   "caption_stage_s": round(stage_s, 2),
                   "ratio": round((n_pipe / s_pipe) / (n_direct / s_direct), 3),
                   "stage_ratio": round(s_direct / stage_s, 3) if stage_s else None,
                   "completion_tokens_direct": t_direct, "completion_tokens_in_caption_rows": t_pipe}
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"\nmachine: {os.cpu_count()} CPUs, {platform.platform()}; videos: {args.videos} x {args.minutes:g} min; "
          f"max_tokens {args.max_tokens}")
    print("| engine | clips | direct clips/s | pipeline clips/s (wall) | ratio (wall) | ratio (in the actor) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['engine']} | {r['clips']} | {r['direct_clips_per_s']} | {r['pipeline_clips_per_s']} "
              f"| {r['ratio']} | {r['stage_ratio']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
