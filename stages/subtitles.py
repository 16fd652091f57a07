"""Subtitles: what is said in a video, as timed cues, from every source it has.

Sources, each a `source` value of the `subtitles` table:
- `uploader` / `auto`: the uploader's subtitles and the platform's automatic captions,
  fetched by yt-dlp when `download.subtitles` names languages: the download stage calls
  `fetch_subtitles` after the video, which stores them beside it (files
  `{video_id}.{source}.{language}.{ext}` and an index `{video_id}.subtitles.json`).
- `embedded`: text subtitle streams inside the container (mov_text, SubRip, WebVTT,
  ASS), extracted with ffmpeg to WebVTT. Picture subtitles (DVD, PGS) hold no text.
- `sidecar`: `NAME.srt` / `NAME.vtt` / `NAME.en.srt` next to a local video `NAME.mp4`.
- `asr`: speech recognition, only for a video none of the above gave a cue, and only
  when `asr.enabled`: the registry hands the stage a `transcriber` (stages/asr.py's
  stage), which it calls through the Stage interface alone.

Files are read with maintained parsers (webvtt-py, srt). Rolling automatic captions
show each line in two or three cues; `merge_cues` keeps each line once, at the time
it first appears. The cue schema and the helpers prompts use
(`preferred_track`, `cues_in`, `subtitle_lines`) are in stages/cues.py.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from typing import Iterator

from stages.base import ErrorRow, Stage
from stages.cues import SUBTITLES_SCHEMA, UNKNOWN_LANGUAGE, SubtitleError, clean_line, subtitles_index_uri
from vico_pipeline import storage

TEXT_CODECS = ("mov_text", "subrip", "srt", "webvtt", "ass", "ssa", "text", "ttml")
SIDECAR_EXTENSIONS = (".srt", ".vtt")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
CUE_SLACK_S = 5.0  # a cue may end this long after the video (players keep the last one up)
_JOIN_GAP_S = 0.05  # cues this close are one continuous display (YouTube's 10 ms transition cues)


# --------------------------------------------------------------------------- parsing
def parse_vtt(text: str) -> list[tuple[float, float, list[str]]]:
    """WebVTT text -> (start_s, end_s, lines) per cue, through webvtt-py."""
    import webvtt
    from webvtt.errors import MalformedCaptionError, MalformedFileError

    try:
        captions = webvtt.from_string(text.lstrip("\ufeff"))
    except (MalformedFileError, MalformedCaptionError) as exc:
        raise SubtitleError("bad_subtitles", f"not a readable WebVTT file: {exc}") from None
    return [(_seconds(c.start_time.to_tuple()), _seconds(c.end_time.to_tuple()), list(c.lines)) for c in captions]


def parse_srt(text: str) -> list[tuple[float, float, list[str]]]:
    """SubRip text -> (start_s, end_s, lines) per cue, through srt."""
    import srt

    try:
        subtitles = list(srt.parse(text.lstrip("\ufeff")))
    except (srt.SRTParseError, srt.TimestampParseError, ValueError) as exc:
        raise SubtitleError("bad_subtitles", f"not a readable SubRip file: {exc}") from None
    return [(s.start.total_seconds(), s.end.total_seconds(), s.content.splitlines()) for s in subtitles]


def _seconds(parts: tuple[int, int, int, int]) -> float:
    hours, minutes, seconds, millis = parts
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def parse_subtitles(text: str, fmt: str) -> list[tuple[float, float, list[str]]]:
    fmt = fmt.lower().lstrip(".")
    if fmt == "vtt":
        return parse_vtt(text)
    if fmt == "srt":
        return parse_srt(text)
    raise SubtitleError("subtitle_format", f"subtitles in {fmt!r} format are not read (only vtt and srt)")


def is_rolling(raw: list[tuple[float, float, list[str]]]) -> bool:
    """Rolling captions: a cue's first line is often the line the previous cue ended with."""
    shown = [[clean_line(x) for x in lines if clean_line(x)] for _, _, lines in raw]
    shown = [lines for lines in shown if lines]
    pairs = list(zip(shown, shown[1:]))
    carried = sum(1 for before, after in pairs if after[0] == before[-1])
    return bool(pairs) and carried >= len(pairs) / 3


def merge_cues(raw: list[tuple[float, float, list[str]]]) -> list[tuple[float, float, str]]:
    """Parsed cues -> (start_s, end_s, text) with everything said kept once, in time order."""
    raw = sorted(raw, key=lambda c: (c[0], c[1]))
    shown = [(start, end, [x for x in (clean_line(line) for line in lines) if x]) for start, end, lines in raw]
    merged = _merge_rolling(shown) if is_rolling(raw) else _merge_repeats(shown)
    return [(s, e, t) for s, e, t in merged if e > s]


def _merge_rolling(shown: list[tuple[float, float, list[str]]]) -> list[list]:
    """Rolling captions, line by line: a line the cue before showed is not new speech (it stays
    up while the next one is typed), so each line keeps the cue it first appeared in."""
    out, before = [], []
    for start, end, lines in shown:
        out += [[start, end, text] for text in lines if text not in before]
        before = lines
    return out


def _merge_repeats(shown: list[tuple[float, float, list[str]]]) -> list[list]:
    """Whole cues: one that repeats the cue before, or grows it word by word, right after it,
    extends it instead of adding a row."""
    out: list[list] = []
    for start, end, lines in shown:
        if not lines:
            continue
        text = " ".join(lines)
        last = out[-1] if out else None
        if last and start <= last[1] + _JOIN_GAP_S and (text == last[2] or text.startswith(last[2] + " ")):
            last[1], last[2] = max(last[1], end), text
            continue
        out.append([start, end, text])
    return out


def read_cues(text: str, fmt: str, source: str, language: str | None) -> list[dict]:
    """A subtitle file's text -> cue rows (without video_id), de-duplicated, in time order."""
    return read_track(text, fmt, source, language)[0]


def read_track(text: str, fmt: str, source: str, language: str | None, max_cues: int | None = None,
               duration_s: float | None = None) -> tuple[list[dict], int]:
    """(cue rows, cues dropped): at most `max_cues` cues (SubtitleError past it, counted before parsing),
    and only cues inside [0, duration_s + CUE_SLACK_S] (a cue at 99999999:00:00 is not this video's)."""
    if max_cues is not None and text.count("-->") > max_cues:
        raise SubtitleError("too_many_cues", f"over subtitles.max_cues={max_cues} cues; the track is skipped")
    raw = parse_subtitles(text, fmt)
    end = math.inf if duration_s is None else duration_s + CUE_SLACK_S
    kept = [c for c in raw if math.isfinite(c[0]) and math.isfinite(c[1]) and 0 <= c[0] and c[1] <= end]
    language = language or UNKNOWN_LANGUAGE
    cues = [{"start_s": round(s, 3), "end_s": round(e, 3), "text": t, "source": source, "language": language}
            for s, e, t in merge_cues(kept)]
    return cues, len(raw) - len(kept)


# --------------------------------------------------------------------------- finding a video's subtitles
def downloaded_entries(video: dict) -> list[dict]:
    """The index the download stage wrote beside the video, if any."""
    media_path = video.get("media_path") or ""
    if "/" not in media_path:
        return []
    index = subtitles_index_uri(media_path.rsplit("/", 1)[0], video["video_id"])
    return storage.read_json(index) if storage.exists(index) else []


def sidecar_files(media_path: str) -> list[tuple[str, str]]:
    """(path, language) of `NAME.srt`, `NAME.vtt`, `NAME.<lang>.srt|vtt` next to a local video."""
    if not media_path or not storage.is_local(media_path):
        return []
    path = media_path[len("file://"):] if media_path.startswith("file://") else media_path
    folder, name = os.path.split(os.path.abspath(path))
    stem = os.path.splitext(name)[0]
    found = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        base, ext = os.path.splitext(entry)
        if ext.lower() not in SIDECAR_EXTENSIONS or not (base == stem or base.startswith(stem + ".")):
            continue
        middle = base[len(stem) + 1:]
        if middle and not _LANGUAGE.match(middle):
            continue  # NAME.backup.srt and the like: not a language, not ours to guess
        found.append((os.path.join(folder, entry), middle or UNKNOWN_LANGUAGE))
    return found


def subtitle_streams(path: str) -> list[dict]:
    """The container's subtitle streams: {index, codec, language}, read through PyAV."""
    import av

    with av.open(path) as container:
        return [{"index": s.index, "codec": s.codec_context.name,
                 "language": (s.metadata or {}).get("language") or UNKNOWN_LANGUAGE}
                for s in container.streams.subtitles]


def extract_stream(path: str, index: int, deadline_s: float, max_bytes: int | None = None) -> str:
    """One subtitle stream as WebVTT text, converted by ffmpeg (SubtitleError past `max_bytes`)."""
    import subprocess

    from stages.ffmpeg import MediaError, run

    with tempfile.TemporaryDirectory(prefix="vico-subs-") as tmp:
        out = os.path.join(tmp, "stream.vtt")
        try:
            run(["-i", path, "-map", f"0:{index}", "-c:s", "webvtt", "-f", "webvtt", out], timeout=deadline_s)
        except subprocess.TimeoutExpired:
            raise SubtitleError("timeout", f"extracting subtitle stream {index} took over "
                                           f"subtitles.deadline_s={deadline_s:g} s") from None
        except MediaError as exc:
            raise SubtitleError("subtitle_extract_failed", f"stream {index}: {exc}") from None
        return _read_text(out, max_bytes if max_bytes is not None else os.path.getsize(out))


def _read_text(uri: str, max_bytes: int) -> str:
    """The file as text; SubtitleError past `max_bytes` (read no further than that)."""
    with storage.open_read(uri) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SubtitleError("subtitles_too_large", f"over subtitles.max_bytes={max_bytes} bytes; the track is skipped")
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- the stage
class SubtitlesStage(Stage):
    """A video's download row in, its cues out (every track it has); ASR when it has none."""

    name = "subtitles"
    schema = SUBTITLES_SCHEMA

    def __init__(self, config, transcriber: Stage | None = None):
        """`transcriber`: a stage that yields cue rows for a video item (speech recognition),
        asked only when no track gave a cue; None for none."""
        super().__init__(config)
        self.section = config.subtitles
        self.asr = transcriber

    def setup(self) -> None:
        if self.asr is not None:
            self.asr.setup()

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        video, vid = item["video"], item["video_id"]
        found = 0
        if self.section.enabled or self.config.download.subtitles:
            for label, load in self.tracks(video):
                try:  # a bad, huge or hostile track is an error row; the video's other tracks go on
                    cues, dropped = load()
                except SubtitleError as exc:
                    yield ErrorRow(vid, item["source"], exc.error_type, f"{label}: {exc}")
                    continue
                if dropped:
                    yield ErrorRow(vid, item["source"], "cues_out_of_range", f"{label}: {dropped} cues outside "
                                   f"[0, duration + {CUE_SLACK_S:g} s] dropped; the others are kept")
                for cue in cues:
                    found += 1
                    yield {"video_id": vid, **cue}
        if not found and self.asr is not None:
            yield from self.asr.process(item)

    def _read(self, text: str, fmt: str, source: str, language: str | None, video: dict):
        return read_track(text, fmt, source, language, self.section.max_cues, video.get("duration_s"))

    def tracks(self, video: dict) -> Iterator[tuple[str, callable]]:
        """(what it is, a loader returning (its cues, cues dropped)) for every track of the video."""
        cap = self.section.max_bytes
        for entry in downloaded_entries(video):
            yield (f"{entry['source']} subtitles ({entry['language']})",
                   lambda e=entry: self._read(_read_text(e["uri"], cap), e["format"], e["source"], e["language"], video))
        if not self.section.enabled:
            return
        media_path = video.get("media_path") or ""
        for path, language in sidecar_files(media_path):
            yield (f"sidecar {os.path.basename(path)}",
                   lambda p=path, lang=language: self._read(_read_text(p, cap), os.path.splitext(p)[1], "sidecar",
                                                            lang, video))
        if video.get("has_subtitles") is False:
            return  # the download probe counted no subtitle stream: no need to open the file
        yield from self._embedded(media_path, video)

    def _embedded(self, media_path: str, video: dict) -> Iterator[tuple[str, callable]]:
        if not media_path:
            return
        with storage.local_copy(media_path) as local:
            for stream in subtitle_streams(local):
                label = f"embedded stream {stream['index']} ({stream['codec']})"
                if stream["codec"] not in TEXT_CODECS:
                    yield label, lambda s=stream: _picture_subtitles(s)
                    continue
                # Called by `process` while this generator holds the local copy open.
                yield label, lambda s=stream, path=local: self._read(extract_stream(
                    path, s["index"], self.section.deadline_s, self.section.max_bytes), "vtt", "embedded",
                    s["language"], video)


def _picture_subtitles(stream: dict) -> list[dict]:
    raise SubtitleError("subtitle_unsupported", f"{stream['codec']} subtitles are pictures, not text "
                                                "(no OCR here); the video's other sources are still read")


__all__ = ["SubtitlesStage", "read_cues", "read_track", "merge_cues", "parse_vtt", "parse_srt", "sidecar_files", "subtitle_streams"]
