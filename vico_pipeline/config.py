"""The run configuration: YAML files validated into typed objects.

`load_config(path, overrides)` is the one entry point. A user's mistake (missing
file, unknown key, wrong type) raises `ConfigError` with one line that names the
key or path; the CLI prints it and exits non-zero.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from vico_pipeline.errors import ConfigError
from vico_pipeline.model.config import EvalConfig, ModelConfig, TrainConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Dataset and version names become folder names: no '/', '..' or leading dot can leave output.root.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class DatasetConfig(Section):
    name: str = Field(default="vico", pattern=NAME_PATTERN)
    # Version name; None picks the next free v1, v2, ...
    version: Optional[str] = Field(default=None, pattern=NAME_PATTERN)


class SourcesConfig(Section):
    manifest: str = "manifest.txt"
    allow_local: bool = False


class OutputConfig(Section):
    root: str = "output"


class RayConfig(Section):
    # None: embedded local Ray (or the cluster of the Ray job we run inside).
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    # Ray's own operator progress bars and info logs (`vico run -v` too); vico's stage lines are always shown.
    progress: bool = False
    # Not on a terminal: vico logs a line per stage that moved this often.
    status_every_s: float = Field(default=5.0, gt=0)
    # Embedded local Ray only: start the dashboard (on 127.0.0.1) and print its address.
    dashboard: bool = False
    # Embedded local Ray only: bytes of shared memory for the object store (None: Ray's default).
    object_store_memory: Optional[int] = None
    # Run without Ray, in this process, when only light stages (no model, no GPU, no decoding)
    # have work left for at most this many videos: a clue-only regeneration skips Ray's start-up.
    # 0: always use Ray.
    inline_max_videos: int = Field(default=64, ge=0)
    # Run without Ray, in this process, when the manifest names one local or object-store file and
    # no stage needs a model actor or a GPU: one video's decode is one task, so Ray would add only
    # its start (vico_pipeline/inline.py one_file_work). `inline_max_videos: 0` turns this off too.
    inline_one_file: bool = True
    # Embedded local Ray only: while it starts, download and decode this many videos (the first
    # of the manifest) in the driver; the DAG goes on from their parts (vico_pipeline/headstart.py).
    # 0: the DAG does all the work.
    head_start_videos: int = Field(default=1, ge=0)


class DownloadConfig(Section):
    max_height: int = 720
    max_bytes: int = 4 * 1024**3
    max_duration_s: float = 4 * 3600
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    cookies_file: Optional[str] = None
    # Egress policy: URL sources resolving to loopback, link-local (cloud metadata), private or
    # unspecified addresses are refused unless inside one of these networks (e.g. "127.0.0.0/8").
    allowed_networks: list[str] = []
    # Object-store sources only from these buckets (empty: any bucket the worker can read).
    allowed_buckets: list[str] = []
    # Entries kept from one playlist or feed.
    max_playlist_entries: int = Field(default=500, ge=1)
    # Languages of the uploader's subtitles (else automatic captions) yt-dlp fetches, e.g. [en]; [] none.
    subtitles: list[str] = []
    # Total seconds one download (every request and redirect, all retries) may take.
    deadline_s: float = Field(default=3600.0, gt=0)
    # Live streams (HLS without an end, dynamic DASH) are refused unless this is true; then they are
    # recorded for at most max_duration_s, within deadline_s.
    allow_live: bool = False
    # Total seconds one probe of a downloaded file may take.
    probe_deadline_s: float = Field(default=120.0, gt=0)
    concurrency: int = 4
    # Per-domain politeness: at most this many downloads at once from one host.
    per_domain_concurrency: int = 2
    # Seconds between the starts of two downloads from the same host.
    per_domain_interval_s: float = 0.0
    num_cpus: float = 1.0

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        import ipaddress

        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network (expected e.g. 10.0.0.0/8 or 127.0.0.1/32)") from None
        return networks


class ClipsConfig(Section):
    seconds: float = 14.0
    # A last partial window is kept when at least this long.
    min_last_s: float = 4.0
    write_files: Literal["off", "copy", "exact"] = "off"


class FramesConfig(Section):
    fps: float = 1.0
    size: int = 336
    jpeg_quality: int = Field(default=4, ge=2, le=31, description="ffmpeg -q:v (2 best, 31 worst)")
    num_cpus: float = 1.0
    concurrency: Optional[int] = None
    # Threads ffmpeg may use for one decode.
    ffmpeg_threads: int = 0
    # Total seconds one ffmpeg decode (or clip cut) of a video may take.
    deadline_s: float = Field(default=6 * 3600.0, gt=0)
    # ffmpeg's scene score (0-1) from which a frame starts a new shot (the `shots` table).
    scene_threshold: float = Field(default=0.3, gt=0, lt=1)


class FilterConfig(Section):
    enabled: bool = True
    # Mean luma (0-255) under which a clip counts as black.
    black_brightness: float = 12.0
    # Mean absolute frame difference (0-255) under which a clip counts as frozen. A small
    # object moving slowly on a dark still background measures about 0.1; a still image ~0.
    frozen_motion: float = 0.05
    # Similarity (0-1) to the previous clip above which a clip counts as a near-duplicate.
    duplicate_similarity: float = 0.995


class EngineSection(Section):
    engine: str = "describe"
    model: Optional[str] = None
    base_url: Optional[str] = None
    # Name of the environment variable holding the API key (never the key itself).
    api_key_env: Optional[str] = None
    prompt_version: str = "v1"
    max_tokens: int = 256
    temperature: float = 0.0
    batch_size: int = 8
    concurrency: int = 4
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    # Total seconds one engine request may take, retries and backoff included.
    deadline_s: float = Field(default=600.0, gt=0)
    num_gpus: float = 0.0
    tensor_parallel_size: int = 1
    replicas: int = 1
    # Autoscaling: the engine's actor pool grows from `replicas` up to this many (None: a fixed pool).
    max_replicas: Optional[int] = None
    device: str = "auto"
    # CPUs each engine worker (task or actor) holds; None: 0.25 for an endpoint engine (openai: it
    # waits on the network), 1 for the others (engines.base.engine_cpus).
    num_cpus: Optional[float] = Field(default=None, gt=0)
    # Ask the engine for JSON (response_format / guided decoding) where it supports it.
    structured_output: bool = True
    # vllm: share of GPU memory for weights + KV cache, context length, extra LLM(...) arguments.
    gpu_memory_utilization: float = 0.9
    max_model_len: Optional[int] = None
    engine_args: dict[str, Any] = {}
    # vllm: where it runs. actor: vLLM's offline LLM in the stage's own actor pool, a video's clips per
    # call; ray_data_llm (caption only): Ray Data's LLM processor, one request row per clip
    # (docs/engines.md). Same requests and parsing either way, so not in the fingerprint.
    runner: Literal["actor", "ray_data_llm"] = "actor"
    # ray_data_llm: the GPU type each vLLM replica needs (e.g. "H100"); None: any GPU.
    accelerator_type: Optional[str] = None

    @field_validator("runner")
    @classmethod
    def _runner_needs_vllm(cls, runner: str, info: ValidationInfo) -> str:
        engine = info.data.get("engine")
        if runner == "ray_data_llm" and engine != "vllm":
            raise ValueError(f"runner ray_data_llm runs the vllm engine only, not {engine!r}")
        return runner


class CaptionConfig(EngineSection):
    engine: Literal["describe", "transformers", "openai", "vllm"] = "describe"
    # v2 also asks which frames show the key event (its span: the shots of those frames).
    prompt_version: str = "v2"
    frames_per_clip: int = 8
    frame_size: int = 448
    # Times a clip is asked again when the caption gates reject its answer (then it is an error row).
    answer_retries: int = Field(default=1, ge=0)
    # The subtitle cues that fall in a clip go into its caption prompt (a clip without cues gets
    # the same prompt as before; with download.subtitles off there are none).
    use_subtitles: bool = True


class CluesConfig(EngineSection):
    engine: Literal["template", "transformers", "openai", "vllm"] = "template"
    # v2 names what the clue gates reject (digits, relative-time words, clues that fit another clip);
    # v3 asks for up to the number for the video's length, part by part when needed, with speech.
    prompt_version: str = "v3"
    # A JSON list of up to max_clues events needs more room than one caption.
    max_tokens: int = 1024
    # At most this many clues a video (an hour at seconds_per_clue 120 asks for 24).
    max_clues: int = 24
    min_clues: int = 3
    # Two clues whose text similarity is above this are near-duplicates.
    duplicate_similarity: float = 0.85
    # Times the engine is asked again when its answer yields too few valid clues.
    validation_retries: int = 1
    # Longest caption text (characters) put into the clue prompt per clip.
    max_caption_chars: int = 600
    # How a clue is checked against the captions: lexical (its own clip's caption shares more of its
    # words than any other clip's) or llm (the clues engine names the clip the clue comes from).
    grounding: Literal["lexical", "llm"] = "lexical"
    # No prompt the clue and summary steps send is longer than this, answer (max_tokens) included
    # (docs/engines.md "Context budget"); long videos are selected in rounds to fit it.
    context_tokens: int = Field(default=8192, ge=256)
    # Clues asked for: one per this many seconds of captioned video, between min_clues and max_clues.
    seconds_per_clue: float = Field(default=120.0, gt=0)
    # The subtitle cues of each clip go into the clue prompt beside its caption.
    use_subtitles: bool = True

    @field_validator("context_tokens")
    @classmethod
    def _room_for_the_answer(cls, tokens: int, info: ValidationInfo) -> int:
        if tokens <= info.data.get("max_tokens", 0):
            raise ValueError(f"context_tokens must be larger than max_tokens ({info.data.get('max_tokens')}): "
                             "the answer is part of the context")
        return tokens

    @field_validator("grounding")
    @classmethod
    def _judge_needs_a_model(cls, grounding: str, info: ValidationInfo) -> str:
        if grounding == "llm" and info.data.get("engine") == "template":
            raise ValueError("grounding llm asks the clues engine, and the template engine is no model")
        return grounding

    @field_validator("runner")
    @classmethod
    def _clues_in_actors(cls, runner: str) -> str:
        if runner != "actor":  # a retry round per video does not fit one dataset-wide pass
            raise ValueError("clues run in the stage's actors only (runner: actor); "
                             "ray_data_llm is for caption")
        return runner


class SummariesConfig(Section):
    """Segment and video summaries, written by the clues engine (stages/summaries.py)."""
    # Clips per segment summary (10 x 14 s = 140 s).
    segment_clips: int = Field(default=10, ge=1)
    prompt_version: str = "v1"


class QuestionsConfig(Section):
    # All nine by default; `summary` and `said_when` are made only for videos with a video summary /
    # subtitle cues (the others are counted in the manifest, stages.questions.tasks_without_input).
    tasks: list[Literal["event_order", "clue_time", "next_event", "before_after", "timeline",
                        "at_time", "gap", "summary", "said_when"]] = [
        "event_order", "clue_time", "next_event", "before_after", "timeline", "at_time", "gap", "summary", "said_when"]
    seed: int = 0
    per_task: int = 2


class BlindConfig(EngineSection):
    """The blind-answer filter: each multiple-choice question asked WITHOUT the video, under every
    rotation of its options; questions answered right in every rotation are dropped."""
    engine: Literal["rules", "transformers", "openai", "vllm"] = "rules"
    # A letter answer is short.
    max_tokens: int = 8
    # Off: every question kept, blind_correct null (a version to compare the filter with).
    enabled: bool = True


class SubtitlesConfig(Section):
    """Cues from embedded text subtitle streams and sidecar .srt/.vtt files next to local videos
    (yt-dlp's subtitles: download.subtitles); the `subtitles` table is empty when off."""
    enabled: bool = True
    # Total seconds one subtitle stream's extraction with ffmpeg may take.
    deadline_s: float = Field(default=600.0, gt=0)
    # A track past either bound is an error row (the video goes on): a 50 MB file of a million cues
    # would otherwise take minutes and a GB to parse.
    max_bytes: int = Field(default=5_000_000, ge=1)
    max_cues: int = Field(default=20_000, ge=1)


class AsrConfig(Section):
    """Speech recognition for videos without subtitles: an OpenAI-compatible
    /v1/audio/transcriptions endpoint (Whisper on vLLM, or any compatible server)."""
    enabled: bool = False
    base_url: Optional[str] = None
    # Name of the environment variable holding the API key (never the key itself).
    api_key_env: Optional[str] = None
    model: Optional[str] = Field(default=None, validate_default=True)
    # Spoken language hint (ISO 639-1, e.g. en); None: the server detects it.
    language: Optional[str] = None
    temperature: float = 0.0
    # Audio is sent in pieces this long: 600 s of 16 kHz 16-bit mono is 19.2 MB, under the 25 MB
    # upload limit of OpenAI's API and of vLLM's default.
    chunk_s: float = Field(default=600.0, gt=0)
    # Send timestamp_granularities=["segment"] (OpenAI, vLLM); transformers serve refuses the field (422),
    # so false there: verbose_json still brings segments from servers that give them.
    segment_timestamps: bool = True
    # Segments the server marks as likely silence (no_speech_prob above this) are left out.
    no_speech_threshold: float = Field(default=0.6, ge=0, le=1)
    timeout_s: float = Field(default=300.0, gt=0)
    retries: int = Field(default=2, ge=0)
    backoff_s: float = 1.0
    # Total seconds one video's transcription (every piece, retries and backoff) may take.
    deadline_s: float = Field(default=3600.0, gt=0)
    # Videos transcribed at once (each holds one request open at a time).
    concurrency: int = Field(default=4, ge=1)

    @field_validator("model")
    @classmethod
    def _model_when_enabled(cls, model: Optional[str], info: ValidationInfo) -> Optional[str]:
        if info.data.get("enabled") and not model:
            raise ValueError("asr.enabled needs asr.model (the speech model the server serves)")
        if info.data.get("enabled") and not (info.data.get("base_url") or info.data.get("api_key_env")):
            raise ValueError("asr.enabled needs asr.base_url (a server) or asr.api_key_env (a hosted API)")
        return model


class DedupConfig(Section):
    # Drop a video that copies another of the version (re-upload, re-encode, trim): the training
    # frames' perceptual hashes (vico_pipeline/dedup.py). The copy kept: the longest, then largest.
    enabled: bool = True


class ExportConfig(Section):
    # Frames an exported sample shows (evenly spread, one in every evidence window); 0: all.
    max_frames: int = Field(default=128, ge=0)


class ShardsConfig(Section):
    val_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    max_rows: int = 256
    max_bytes: int = 512 * 1024**2
    row_group_rows: int = 16
    seed: int = 0


class Config(Section):
    dataset: DatasetConfig = DatasetConfig()
    sources: SourcesConfig = SourcesConfig()
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()
    download: DownloadConfig = DownloadConfig()
    clips: ClipsConfig = ClipsConfig()
    frames: FramesConfig = FramesConfig()
    filter: FilterConfig = FilterConfig()
    caption: CaptionConfig = CaptionConfig()
    clues: CluesConfig = CluesConfig()
    summaries: SummariesConfig = SummariesConfig()
    questions: QuestionsConfig = QuestionsConfig()
    blind: BlindConfig = BlindConfig()
    subtitles: SubtitlesConfig = SubtitlesConfig()
    asr: AsrConfig = AsrConfig()
    shards: ShardsConfig = ShardsConfig()
    dedup: DedupConfig = DedupConfig()
    export: ExportConfig = ExportConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=3' -> ('a.b', 3); the value is read as YAML so lists and numbers work."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    if first["type"] == "value_error" and isinstance(first.get("input"), str):
        return f"config key '{key}': {first['msg'].removeprefix('Value error, ')} (got {first['input']!r})"
    return f"config key '{key}': {first['msg']} (got {first.get('input')!r})"


def _yaml_where(exc: yaml.YAMLError) -> str:
    """' at line L, column C: the problem' from a YAML error (its marks count from 0)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}"


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML{_yaml_where(exc)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def config_value(plain: dict, dotted: str):
    """The value at a dotted key (`caption.model`) of a plain config dict (`to_plain`)."""
    node = plain
    for part in dotted.split("."):
        node = node[part]
    return node


def to_plain(config: Config) -> dict:
    """The resolved config as plain data, for manifests and fingerprints."""
    return config.model_dump(mode="json")
