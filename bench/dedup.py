"""What finding copies costs: hashing the training frames, and matching videos.

    python bench/dedup.py [--video PATH] [--videos 50] [--minutes 60]

- hash: the frames stage's decode of one video (its three branches, the JPEG encodes, the
  hashes; the baseline) and, apart, pHash + colour code of its training frames alone (1 fps),
  as seconds per video-hour and as a share of the decode;
- match: `dedup.duplicates` over `--videos` videos of `--minutes` minutes of random hashes
  (none copies another: the work of a version with no copy), and with one copy among them.

Without --video a 6-minute demo video is made (vico_pipeline/demo.py). No Ray.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from stages.ffmpeg import probe  # noqa: E402
from stages.frames import FramesStage, frame_hashes  # noqa: E402
from vico_pipeline.config import load_config  # noqa: E402
from vico_pipeline.dedup import Video, duplicates  # noqa: E402


def hash_cost(path: str) -> dict:
    meta = probe(path)
    stage = FramesStage(load_config(os.path.join(REPO, "configs/demo.yaml")))
    started = time.perf_counter()
    clips = list(stage.process({"video": {"video_id": "v", "source": path, "duration_s": meta.duration_s,
                                          "media_path": path}}))
    decode_s = time.perf_counter() - started
    jpegs = [j for c in clips for j in c["train_frames"]]
    started = time.perf_counter()
    frame_hashes(jpegs)
    hash_s = time.perf_counter() - started
    hours = meta.duration_s / 3600
    return {"video_s": round(meta.duration_s, 1), "size": f"{meta.width}x{meta.height}", "frames": len(jpegs),
            "frames_stage_s_per_video_hour": round(decode_s / hours, 1),
            "hash_s_per_video_hour": round(hash_s / hours, 2), "hash_ms_per_frame": round(1000 * hash_s / len(jpegs), 3),
            "hash_share_of_frames_stage": round(hash_s / decode_s, 4)}


def match_cost(videos: int, minutes: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    frames = int(minutes * 60)

    def random_video(k: int) -> Video:
        return Video(f"v{k}", minutes * 60, 640 * 360, rng.integers(0, 2**63, frames, dtype=np.int64).view(np.uint64),
                     rng.integers(0, 32, (frames, 12), dtype=np.uint8))

    pool = [random_video(k) for k in range(videos)]
    started = time.perf_counter()
    none = duplicates(pool)
    alone_s = time.perf_counter() - started
    copy = Video("copy", pool[0].duration_s - 10, pool[0].pixels, pool[0].hashes[10:].copy(), pool[0].colours[10:].copy())
    started = time.perf_counter()
    found = duplicates(pool + [copy])
    with_copy_s = time.perf_counter() - started
    return {"videos": videos, "minutes": minutes, "false_matches": len(none), "found": sorted(found),
            "match_s": round(alone_s, 3), "match_s_with_a_copy": round(with_copy_s, 3),
            "match_s_per_video_hour": round(alone_s / (videos * minutes / 60), 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video")
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args(argv)
    path = args.video
    with tempfile.TemporaryDirectory() as tmp:
        if path is None:
            from vico_pipeline.demo import script, write_video

            path = os.path.join(tmp, "demo.mp4")
            write_video(path, script(7, 360.0))
        result = {"hash": hash_cost(path), "match": match_cost(args.videos, args.minutes)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
