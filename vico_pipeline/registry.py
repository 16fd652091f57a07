"""The stages of a run, in order, and what decides each one's output.

`vico_pipeline.pipeline` turns this list into the Ray Data DAG. A stage's
fingerprint hashes the config keys named here plus its inputs' fingerprints,
so changing a key re-runs that stage and the ones after it, and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from stages.download import VIDEOS_SCHEMA
from stages.frames import CLIPS_SCHEMA
from vico_pipeline.storage import join


@dataclass(frozen=True)
class StageSpec:
    name: str
    table: str
    schema: pa.Schema
    # Upstream stages whose rows for the same video make up the stage's item.
    inputs: tuple[str, ...]
    # (config, stage_root) -> a stages.base.Stage
    build: Callable
    # Dotted config keys (sections or single keys) that decide this stage's output.
    config_keys: tuple[str, ...]
    # Ray resources: (config) -> {"num_cpus", "num_gpus", "concurrency", "actor"}
    resources: Callable = field(default=lambda config: {"num_cpus": 1, "num_gpus": 0, "concurrency": None, "actor": False})
    # Bumped when the stage's code changes what it writes.
    code_version: str = "1"
    # (stage, switch) pairs: inputs a video may lack (no rows: the item gets []), read only while
    # the dotted boolean config key `switch` is on (None: always), and only when that stage exists.
    optional_inputs: tuple[tuple[str, str | None], ...] = ()
    # Input columns the stage never reads: left on disk, so a worker's memory does not grow with
    # the video's frames (the training JPEGs are only for shards).
    unread_columns: tuple[str, ...] = ()

    def used_optional(self, config, names) -> tuple[str, ...]:
        """The optional inputs this run reads (their fingerprints enter this stage's)."""
        from vico_pipeline.config import config_value, to_plain

        plain = to_plain(config) if any(switch for _, switch in self.optional_inputs) else {}
        return tuple(name for name, switch in self.optional_inputs
                     if name in names and (switch is None or config_value(plain, switch)))


def _download(config, root):
    from stages.download import DownloadStage
    from vico_pipeline.runtime import cluster_domain_gate
    return DownloadStage(config, media_root=join(root, "media"), gate=cluster_domain_gate())


def _frames(config, root):
    from stages.frames import FramesStage
    return FramesStage(config, clip_root=join(root, "clips"), shots_root=join(root, "shots"))


def _download_resources(config):
    return {"num_cpus": config.download.num_cpus, "num_gpus": 0,
            "concurrency": config.download.concurrency, "actor": False}


def _frames_resources(config):
    return {"num_cpus": config.frames.num_cpus, "num_gpus": 0,
            "concurrency": config.frames.concurrency, "actor": False}


def _filter(config, root):
    from stages.clip_filter import ClipFilterStage
    return ClipFilterStage(config)


def _caption(config, root):
    from stages.caption import CaptionStage
    return CaptionStage(config)


def _summaries(config, root):
    from stages.summaries import SummariesStage
    return SummariesStage(config)


def _clues(config, root):
    from stages.clues import CluesStage
    return CluesStage(config, candidates_root=join(root, "clue_candidates"))


def _questions(config, root):
    from stages.questions import QuestionsStage
    return QuestionsStage(config)


def _blind(config, root):
    from stages.blind import BlindStage
    return BlindStage(config)


def _blind_resources(config):
    from vico_pipeline.engines import engine_resources
    return engine_resources(config.blind)


def _subtitles(config, root):
    from stages.subtitles import SubtitlesStage

    transcriber = None
    if config.asr.enabled:  # speech recognition for videos without any subtitle track
        from stages.asr import AsrStage
        transcriber = AsrStage(config)
    return SubtitlesStage(config, transcriber=transcriber)


def _subtitles_resources(config):
    # With speech recognition on, each task holds a request to the ASR server: at most asr.concurrency.
    return {"num_cpus": 1, "num_gpus": 0, "concurrency": config.asr.concurrency if config.asr.enabled else None,
            "actor": False}


def _light_resources(config):
    return {"num_cpus": 1, "num_gpus": 0, "concurrency": None, "actor": False}


def _caption_resources(config):
    from vico_pipeline.engines import engine_resources
    return engine_resources(config.caption)


def _clues_resources(config):
    from vico_pipeline.engines import engine_resources
    return engine_resources(config.clues)


# What decides an engine stage's output (not where it runs, nor how fast).
_ENGINE_KEYS = ("engine", "model", "prompt_version", "max_tokens", "temperature", "structured_output")


def stage_specs() -> list[StageSpec]:
    from stages.caption import CAPTIONS_SCHEMA
    from stages.clip_filter import FILTERED_SCHEMA
    from stages.clues import CLUES_SCHEMA
    from stages.summaries import SUMMARIES_SCHEMA
    from stages.blind import BLIND_SCHEMA
    from stages.common import QUESTIONS_SCHEMA
    from stages.cues import SUBTITLES_SCHEMA

    specs = [
        StageSpec("download", "videos", VIDEOS_SCHEMA, (), _download,
                  ("sources.allow_local", "download.max_height", "download.max_bytes",
                   "download.max_duration_s", "download.cookies_file", "download.allowed_networks",
                   "download.allowed_buckets", "download.max_playlist_entries", "download.subtitles",
                   "download.allow_live"),
                  _download_resources,
                  code_version="3"),  # 2: redacted sources, egress policy, PyAV probe; 3: measured duration
        # (declared_duration_s), subprocesses behind the egress proxy, live refused
        # Cues from yt-dlp's subtitles, embedded tracks and sidecar files; speech recognition when none.
        StageSpec("subtitles", "subtitles", SUBTITLES_SCHEMA, ("download",), _subtitles,
                  ("subtitles.enabled", "asr.enabled", "asr.model", "asr.language", "asr.temperature",
                   "asr.chunk_s", "asr.segment_timestamps", "asr.no_speech_threshold", "subtitles.max_bytes",
                   "subtitles.max_cues"), _subtitles_resources,
                  code_version="2"),  # 2: plain text (unescape, strip, no control characters), cues in range
        StageSpec("frames", "clips", CLIPS_SCHEMA, ("download",), _frames,
                  ("clips", "frames.fps", "frames.size", "frames.jpeg_quality", "frames.scene_threshold",
                   "caption.frames_per_clip", "caption.frame_size"), _frames_resources,
                  # 2: frame times are the frames' presentation times; 3: cuts_s (the shots), frame hashes
                  code_version="3"),
        StageSpec("filter", "filtered", FILTERED_SCHEMA, ("download", "frames"), _filter,
                  ("filter",), _light_resources, unread_columns=("train_frames", "caption_frames")),
        StageSpec("caption", "captions", CAPTIONS_SCHEMA, ("download", "frames", "filter"), _caption,
                  tuple(f"caption.{k}" for k in _ENGINE_KEYS) + ("caption.answer_retries", "caption.use_subtitles"),
                  _caption_resources, code_version="4",  # 4: key event frames, event span, rejected answers
                  optional_inputs=(("subtitles", "caption.use_subtitles"),),
                  unread_columns=("train_frames",)),
        # Segment and video summaries, written by the clues engine from the captions.
        StageSpec("summaries", "summaries", SUMMARIES_SCHEMA, ("download", "caption"), _summaries,
                  tuple(f"clues.{k}" for k in _ENGINE_KEYS) + ("clues.context_tokens", "clues.validation_retries",
                                                               "summaries"), _clues_resources,
                  code_version="2"),  # 2: the stand-in summary's counts in the singular ("1 part summary")
        StageSpec("clues", "clues", CLUES_SCHEMA, ("download", "caption"), _clues,
                  tuple(f"clues.{k}" for k in _ENGINE_KEYS) + (
                      "clues.max_clues", "clues.min_clues", "clues.duplicate_similarity",
                      "clues.validation_retries", "clues.max_caption_chars", "clues.grounding",
                      "clues.context_tokens", "clues.seconds_per_clue", "clues.use_subtitles",
                      "summaries.segment_clips"), _clues_resources,
                  code_version="4",  # 4: event spans
                  optional_inputs=(("summaries", None), ("subtitles", "clues.use_subtitles"))),
        # summary needs the video summary, said_when the subtitle cues: a video without them gets the other tasks.
        StageSpec("questions", "questions", QUESTIONS_SCHEMA, ("download", "clues", "caption"), _questions,
                  ("questions", "clips.seconds", "shards.val_fraction"), _light_resources,
                  code_version="6",  # 6: keys judged on event spans, no repeats, balanced options, templates
                  optional_inputs=(("summaries", None), ("subtitles", None))),
        # Its output replaces the questions stage's in the version's `questions` table (last one wins).
        StageSpec("blind", "questions", BLIND_SCHEMA, ("download", "questions"), _blind,
                  tuple(f"blind.{k}" for k in _ENGINE_KEYS) + ("blind.enabled",), _blind_resources),
    ]
    return specs


__all__ = ["StageSpec", "stage_specs"]
