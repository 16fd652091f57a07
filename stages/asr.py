"""Speech to timed cues: audio through an OpenAI-compatible /v1/audio/transcriptions endpoint.

For videos with no subtitles (the subtitles stage calls this when `asr.enabled` and it
found no cue). The audio track is extracted with ffmpeg as 16 kHz mono WAV, the format
Whisper models take, in pieces of `asr.chunk_s` seconds (upload limits: 25 MB on OpenAI's
API and by default on vLLM); each piece is sent with `response_format=verbose_json` and
`timestamp_granularities=["segment"]`, and its segments, shifted by the piece's start,
become cues with source `asr`. A server that answers text without segments (transformers
serve does) gives one cue spanning the piece.

A video without an audio stream, an endpoint that fails, or a transcription past
`asr.deadline_s` is an error row; the run goes on. A video is transcribed whole or not at
all, so a cue table never holds half a video's speech.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
import wave
from typing import Iterator

import openai

from stages.base import ErrorRow, Stage
from vico_pipeline.engines.http import deadline as request_deadline, openai_client
from vico_pipeline.engines.retry import RetriesExhausted
from stages.cues import SUBTITLES_SCHEMA, UNKNOWN_LANGUAGE, clean_line
from vico_pipeline import storage

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects


class AsrError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def extract_audio(media_path: str, out_dir: str, chunk_s: float, timeout_s: float) -> list[tuple[str, float, float]]:
    """The first audio stream as 16 kHz mono WAV pieces of `chunk_s` seconds:
    [(path, start_s, duration_s)], starts counted from the samples, so they add up exactly."""
    from stages.ffmpeg import MediaError, run

    if not audio_streams(media_path):
        raise AsrError("no_audio", "the video has no audio stream to transcribe")
    pattern = os.path.join(out_dir, "audio-%05d.wav")
    try:
        run(["-i", media_path, "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le",
             "-f", "segment", "-segment_time", f"{chunk_s:g}", "-reset_timestamps", "1", pattern],
            timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AsrError("timeout", f"extracting the audio took over asr.deadline_s={timeout_s:g} s") from None
    except MediaError as exc:
        raise AsrError("audio_extract_failed", str(exc)) from None
    pieces, start = [], 0.0
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        with wave.open(path, "rb") as audio:
            duration = audio.getnframes() / audio.getframerate()
        if duration > 0:
            pieces.append((path, start, duration))
        start += duration
    if not pieces:
        raise AsrError("no_audio", "the audio stream holds no samples")
    return pieces


def audio_streams(path: str) -> int:
    """Audio streams in the container, read through PyAV (never from ffmpeg's log)."""
    import av

    with av.open(path) as container:
        return len(container.streams.audio)


class AsrClient:
    """One OpenAI client per worker; our retry helper retries, under the video's deadline."""

    def __init__(self, section):
        api_key = "EMPTY"  # local servers accept any key
        if section.api_key_env:
            api_key = os.environ.get(section.api_key_env) or ""
            if not api_key:
                raise AsrError("config", f"environment variable {section.api_key_env} (asr.api_key_env) is not set")
        self.section = section
        self._secret = api_key if section.api_key_env else None
        self.client = openai_client(section.base_url, api_key, section.timeout_s)
        self.sleep = time.sleep

    def transcribe(self, path: str, deadline: float) -> tuple[list[dict], str | None]:
        """One WAV piece -> ([{start_s, end_s, text}] relative to the piece, language or None)."""
        from vico_pipeline.engines.openai import is_retryable
        from vico_pipeline.engines.retry import call_with_retries

        section = self.section
        with open(path, "rb") as handle:
            audio = handle.read()

        def request():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AsrError("timeout", f"the transcription took over asr.deadline_s={section.deadline_s:g} s")
            kwargs = {"model": section.model, "file": (os.path.basename(path), audio, "audio/wav"),
                      "response_format": "verbose_json", "temperature": section.temperature,
                      "timeout": min(section.timeout_s, left)}
            if section.segment_timestamps:
                kwargs["timestamp_granularities"] = ["segment"]
            if section.language:
                kwargs["language"] = section.language
            return self.client.audio.transcriptions.create(**kwargs)

        response = call_with_retries(request, section.retries, section.backoff_s, is_retryable, sleep=self._sleep(deadline))
        return self.segments(response), getattr(response, "language", None)

    def _sleep(self, deadline: float):
        def sleep(delay: float) -> None:
            if time.monotonic() + delay >= deadline:
                raise AsrError("timeout", f"no time left for another try within asr.deadline_s="
                                          f"{self.section.deadline_s:g} s")
            self.sleep(delay)
        return sleep

    def segments(self, response) -> list[dict]:
        segments = getattr(response, "segments", None)
        if segments is None and isinstance(response, dict):
            segments = response.get("segments")
        if segments is None:  # a server that gives the text only
            text = clean_line(getattr(response, "text", "") or "")
            return [{"start_s": 0.0, "end_s": None, "text": text}] if text else []
        out = []
        for seg in segments:
            get = seg.get if isinstance(seg, dict) else lambda k, s=seg: getattr(s, k, None)
            text = clean_line(get("text") or "")
            no_speech = get("no_speech_prob")
            if not text or (no_speech is not None and no_speech > self.section.no_speech_threshold):
                continue  # Whisper invents words over silence; the server says how likely that is
            out.append({"start_s": float(get("start") or 0.0), "end_s": float(get("end") or 0.0), "text": text})
        return out


def error_type(exc: BaseException) -> str:
    from vico_pipeline.engines.openai import error_type as endpoint_error

    last = exc.last if isinstance(exc, RetriesExhausted) else exc
    if isinstance(last, AsrError):
        return last.error_type
    return "asr_" + endpoint_error(exc)


def _one_line(exc: BaseException, secret: str | None) -> str:
    text = " ".join(str(exc).split())[:300]
    return text.replace(secret, "***") if secret else text


# What ends one video's transcription as an error row (anything else is a bug: safe_process reports it).
_FAILURES = (AsrError, RetriesExhausted, openai.OpenAIError)


class AsrStage(Stage):
    """A video's download row in, cues with source `asr` out (rows of the subtitles table)."""

    name = "asr"
    schema = SUBTITLES_SCHEMA

    def __init__(self, config):
        super().__init__(config)
        self.section = config.asr
        self.client: AsrClient | None = None

    def setup(self) -> None:
        try:
            self.client = AsrClient(self.section)
        except AsrError as exc:  # e.g. the API key's variable unset on this worker: every video says so
            self.broken = exc

    broken: AsrError | None = None

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        video, vid = item["video"], item["video_id"]
        if self.broken is not None:
            yield ErrorRow(vid, item["source"], "asr_config", str(self.broken))
            return
        if video.get("has_audio") is False:
            yield ErrorRow(vid, item["source"], "no_audio", "the video has no audio stream to transcribe")
            return
        try:
            cues = self.transcribe(video)
        except _FAILURES as exc:  # this video's audio or endpoint failed; the run goes on
            yield ErrorRow(vid, item["source"], error_type(exc), _one_line(exc, self.client._secret))
            return
        for cue in cues:
            yield {"video_id": vid, **cue}

    def transcribe(self, video: dict) -> list[dict]:
        """The whole video under one deadline: the client cuts any read or write past it."""
        deadline = time.monotonic() + self.section.deadline_s
        cues = []
        with request_deadline(self.section.deadline_s), storage.local_copy(video["media_path"]) as local, \
                tempfile.TemporaryDirectory(prefix="vico-asr-") as tmp:
            for path, start, duration in extract_audio(local, tmp, self.section.chunk_s, self.section.deadline_s):
                segments, language = self.client.transcribe(path, deadline)
                language = self.section.language or language or UNKNOWN_LANGUAGE
                for seg in segments:
                    end = duration if seg["end_s"] is None else min(seg["end_s"], duration)
                    if end > seg["start_s"]:
                        cues.append({"start_s": round(start + seg["start_s"], 3), "end_s": round(start + end, 3),
                                     "text": seg["text"], "source": "asr", "language": language})
        return cues


__all__ = ["AsrStage", "AsrClient", "AsrError", "extract_audio", "SAMPLE_RATE"]
