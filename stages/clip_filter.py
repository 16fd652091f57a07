"""Clip filter: black, frozen and near-duplicate clips are dropped before a caption is paid for.

It reads the signals the frames stage measured (mean brightness, mean frame
change, similarity to the previous clip) and writes one row per clip with
`kept` and the reason it was dropped. Thresholds are `filter.*` in the config;
`filter.enabled: false` keeps every clip.
"""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage

FILTERED_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("video_id", pa.string()),
    ("clip_index", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("kept", pa.bool_()),
    ("reason", pa.string()),
    ("brightness", pa.float64()),
    ("motion", pa.float64()),
    ("dup_similarity", pa.float64()),
])


def verdict(clip: dict, cfg) -> str:
    """'' to keep the clip, else why it is dropped."""
    if not cfg.enabled:
        return ""
    if not clip.get("caption_frame_times_s"):  # the times, not the JPEGs: the stage never reads those
        return "no_frames"
    if clip["brightness"] < cfg.black_brightness:
        return "black"
    if len(clip["caption_frame_times_s"]) > 1 and clip["motion"] < cfg.frozen_motion:
        return "frozen"
    if clip["dup_similarity"] > cfg.duplicate_similarity:
        return "duplicate"
    return ""


class ClipFilterStage(Stage):
    name = "filter"
    schema = FILTERED_SCHEMA

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        clips = sorted(item["frames"], key=lambda c: c["clip_index"])
        for clip in clips:
            reason = verdict(clip, self.config.filter)
            yield {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "clip_index": clip["clip_index"],
                   "start_s": clip["start_s"], "end_s": clip["end_s"], "kept": not reason, "reason": reason,
                   "brightness": clip["brightness"], "motion": clip["motion"],
                   "dup_similarity": clip["dup_similarity"]}
