"""Subtitle cues: the `subtitles` table's schema and the helpers every reader of cues shares.

The subtitles stage and the ASR stage write cues; the caption, clue and question stages read
them into prompts; the download stage fetches the uploader's tracks with yt-dlp and stores them
beside the video (`fetch_subtitles`). All of that lives here, so no stage imports another.
"""
from __future__ import annotations

import html
import os
import re
import tempfile
import unicodedata
from typing import Iterable

import pyarrow as pa

from vico_pipeline import storage

SUBTITLES_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("text", pa.string()),
    ("source", pa.string()),
    ("language", pa.string()),
])

SOURCES = ("uploader", "embedded", "sidecar", "auto", "asr")  # also the preference order for prompts
UNKNOWN_LANGUAGE = "und"  # ISO 639-2 "undetermined", what ffmpeg writes for an untagged stream
_TAG = re.compile(r"<[^>]*>")  # WebVTT/SRT markup: <c>, <i>, <00:00:01.000> word timings
_ASS_OVERRIDE = re.compile(r"\{\\[^}]*\}")  # {\an8} and other ASS overrides SRT files carry


class SubtitleError(Exception):
    """A subtitle file or stream we cannot read; `error_type` names the reason."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


# Bidirectional overrides and isolates: they reorder what a reader sees ("Trojan source").
_BIDI = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


# --------------------------------------------------------------------------- parsing
def clean_line(line: str) -> str:
    """One displayed line as plain text that can never hold markup: entities unescaped FIRST (until
    none is left, so `&amp;lt;script&amp;gt;` cannot come back as a tag), then tags and ASS overrides
    stripped (until none is left), then control characters (BEL, ESC, bidi overrides) dropped and
    spaces collapsed."""
    for _ in range(5):  # each pass peels one layer of escaping; five is more than any real file has
        unescaped = html.unescape(line)
        if unescaped == line:
            break
        line = unescaped
    while True:
        stripped = _TAG.sub("", _ASS_OVERRIDE.sub("", line))
        if stripped == line:
            break
        line = stripped
    line = line.replace("\\N", " ").translate(_BIDI)
    line = "".join(" " if ch.isspace() else ch for ch in line if ch.isspace() or unicodedata.category(ch) != "Cc")
    return " ".join(line.split())


# --------------------------------------------------------------------------- for prompts
def cues_in(cues: Iterable[dict], start_s: float, end_s: float) -> list[dict]:
    """The cues shown during [start_s, end_s) (any overlap), in time order."""
    return sorted((c for c in cues if c["start_s"] < end_s and c["end_s"] > start_s),
                  key=lambda c: (c["start_s"], c["end_s"]))


def preferred_track(cues: Iterable[dict], languages: Iterable[str] = ()) -> list[dict]:
    """The cues of one track (source, language), so a prompt never mixes two: the first of
    `languages` that has a track (a prefix counts: 'en' takes 'en-US'), then by SOURCES order."""
    tracks: dict[tuple[str, str], list[dict]] = {}
    for cue in cues:
        tracks.setdefault((cue["source"], cue["language"]), []).append(cue)
    if not tracks:
        return []

    def rank(key: tuple[str, str]) -> tuple[int, int]:
        source, language = key
        wanted = [i for i, lang in enumerate(languages) if language.lower().startswith(lang.lower())]
        order = SOURCES.index(source) if source in SOURCES else len(SOURCES)
        return (wanted[0] if wanted else len(list(languages)), order)

    return sorted(tracks[min(tracks, key=rank)], key=lambda c: (c["start_s"], c["end_s"]))


def subtitle_lines(cues: Iterable[dict], max_chars: int | None = None) -> str:
    """Cues as prompt lines, one quoted line a cue, in time order; no times (they would invite
    digits into captions and clues). Past `max_chars` the rest is named, never dropped silently."""
    lines, used = [], 0
    ordered = sorted(cues, key=lambda c: (c["start_s"], c["end_s"]))
    for index, cue in enumerate(ordered):
        line = f"\"{cue['text']}\""
        if max_chars is not None and used + len(line) + 1 > max_chars:
            lines.append(f"(... {len(ordered) - index} more subtitle lines not shown)")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


# --------------------------------------------------------------------------- yt-dlp (download stage)
def ytdlp_subtitle_options(languages: Iterable[str]) -> dict:
    """yt-dlp options that fetch the uploader's subtitles, else automatic captions, in `languages`
    (download.subtitles) as WebVTT where offered; {} when no language is asked for."""
    languages = list(languages or ())
    if not languages:
        return {}
    return {"writesubtitles": True, "writeautomaticsub": True, "subtitleslangs": languages,
            "subtitlesformat": "vtt/srt/best"}


def fetch_subtitles(info: dict, ydl_params: dict, languages: Iterable[str], media_root: str,
                    video_id: str) -> list[dict]:
    """The download stage's call, right after yt-dlp downloaded the video described by `info`
    (inside its egress guard, with `ydl_params` the downloader's options): fetch the subtitles in
    `languages` and store them beside the video (`store_downloaded_subtitles`); returns the index.

    A second yt-dlp pass that skips the video: yt-dlp fails a whole download when one subtitle
    file fails, and a missing subtitle must never cost the video."""
    import yt_dlp

    options = ytdlp_subtitle_options(languages)
    if not options:
        return []
    with tempfile.TemporaryDirectory(prefix="vico-subs-") as tmp:
        params = {**ydl_params, **options, "skip_download": True, "ignoreerrors": True, "quiet": True,
                  "no_warnings": True, "logger": _SilentLogger(), "outtmpl": os.path.join(tmp, "video.%(ext)s")}
        with yt_dlp.YoutubeDL(params) as ydl:
            fetched = ydl.process_ie_result(dict(info), download=True) or {}
        return store_downloaded_subtitles(fetched, media_root, video_id)


class _SilentLogger:
    """A failed subtitle file is a warning yt-dlp would print; the index simply lacks it."""

    def debug(self, msg):
        pass

    info = warning = error = debug


def subtitles_index_uri(media_root: str, video_id: str) -> str:
    return storage.join(media_root, f"{video_id}.subtitles.json")


def store_downloaded_subtitles(info: dict, media_root: str, video_id: str) -> list[dict]:
    """After a yt-dlp download with `ytdlp_subtitle_options`: store the subtitle files it wrote
    (`info['requested_subtitles']`) beside the video and index them; returns the index entries.

    yt-dlp takes a language from the uploader's subtitles when it has them, else from the
    automatic captions, so a language in `info['subtitles']` is `uploader`, any other `auto`."""
    requested = info.get("requested_subtitles") or {}
    uploaded = info.get("subtitles") or {}
    entries = []
    for language, sub in sorted(requested.items()):
        path = sub.get("filepath")
        if not path or not os.path.isfile(path):
            continue  # yt-dlp could not fetch it; the video is still good
        source = "uploader" if language in uploaded else "auto"
        fmt = (sub.get("ext") or os.path.splitext(path)[1]).lstrip(".").lower()
        target = storage.join(media_root, f"{video_id}.{source}.{language}.{fmt}")
        storage.upload_file(path, target)
        entries.append({"uri": target, "source": source, "language": language, "format": fmt})
    if entries:
        storage.write_json(subtitles_index_uri(media_root, video_id), entries)
    return entries
