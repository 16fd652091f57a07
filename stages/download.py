"""Download: one manifest line in, one video row per video it names out.

URLs go through yt-dlp (direct files, HLS, pages with embedded videos,
playlists, which expand to their videos). Local paths and file:// URLs are used
in place when `sources.allow_local` is set; object-store URIs are copied.
Every video is probed before it counts as downloaded, so a 404 page, an HTML
file, an image or a truncated file becomes an error row with the reason.

Egress policy (vico_pipeline/egress.py): URL sources, their redirects and their
playlist entries may not reach internal addresses unless `download.allowed_networks`
says so; object-store sources only the buckets in `download.allowed_buckets` (when
set). A download has a total deadline and a byte cap on the bytes received.
What yt-dlp fetches itself is checked socket by socket; what it hands to an ffmpeg
subprocess (live HLS, SAMPLE-AES, live DASH) goes through a loopback egress proxy
with the same policy (vico_pipeline/egress_proxy.py), and the subprocess is killed
with its process group at the deadline. Live streams are refused unless
`download.allow_live`; then ffmpeg records at most `max_duration_s` of them.
Every row and message this stage writes holds the redacted source; the real URL
is used only to fetch.
"""
from __future__ import annotations

import os
import itertools
import random
import re
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow as pa

from stages.base import ErrorRow, Stage
from stages.ffmpeg import MediaError, ffmpeg_exe, probe
from stages.manifest import local_path, normalise_source, source_kind, video_id_for
from stages.cues import fetch_subtitles
from vico_pipeline import storage
from vico_pipeline.egress import EgressGuard, EgressPolicy, ForbiddenAddress, guard_subprocesses
from vico_pipeline.egress_proxy import EgressProxy
from vico_pipeline.redact import redact_text

VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("title", pa.string()),
    ("uploader", pa.string()),
    ("upload_date", pa.string()),
    ("license", pa.string()),
    ("has_subtitles", pa.bool_()),
    ("duration_s", pa.float64()),  # measured: the last packet's end when the container's word is off by >10%
    ("declared_duration_s", pa.float64()),  # what the container states
    ("fps", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("rotation", pa.int32()),
    ("codec", pa.string()),
    ("variable_frame_rate", pa.bool_()),
    ("has_audio", pa.bool_()),
    ("bytes", pa.int64()),
    ("media_path", pa.string()),
    ("status", pa.string()),
])


class DownloadRejected(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


# yt-dlp's messages -> our error types; throttling is told apart from dead links.
_ERROR_PATTERNS = [
    (r"forbidden_address", "forbidden_address"),
    (r"HTTP Error 429|Too Many Requests", "throttled"),
    # Age gates, private and members-only videos need a cookies file, not another try.
    (r"confirm your age|age.restricted|Private video|members.only|[Jj]oin this channel", "forbidden"),
    (r"[Ss]ign in to confirm|confirm you.re not a bot", "throttled"),
    (r"HTTP Error 404|Not Found|HTTP Error 410|Video unavailable|has been removed|no longer available", "not_found"),
    (r"HTTP Error 403|Forbidden", "forbidden"),
    (r"HTTP Error 5\d\d", "server_error"),
    (r"Connection refused|Errno 111", "connection_refused"),
    (r"timed out|Timeout", "timeout"),
    (r"Unsupported URL|No video formats|no suitable", "not_a_video"),
    (r"Name or service not known|getaddrinfo failed|Temporary failure in name resolution", "dns_error"),
    (r"bytes read|ContentTooShort|IncompleteRead|Did not get any data", "truncated"),
    (r"File is larger than max-filesize|larger than max", "too_large"),
]
TRANSIENT = {"throttled", "server_error", "timeout", "truncated"}
# What an ffmpeg started by yt-dlp may open: the network through the proxy (httpproxy is its
# CONNECT tunnel), decryption and inline data; no file:// a remote playlist could name.
FFMPEG_PROTOCOLS = "http,https,tls,tcp,httpproxy,crypto,data"


def is_live(info: dict) -> bool:
    """yt-dlp's word for a stream still being broadcast (HLS without #EXT-X-ENDLIST, dynamic DASH)."""
    return bool(info.get("is_live")) or info.get("live_status") in ("is_live", "is_upcoming", "post_live")


def classify(message: str) -> str:
    for pattern, error_type in _ERROR_PATTERNS:
        if re.search(pattern, message):
            return error_type
    return "download_failed"


class _DomainGate:
    """At most N downloads at once per host, with a minimum interval between starts.

    Shared by the threads of one process. Under Ray the pipeline hands the stage
    a gate with the same interface shared by every worker of the run
    (`vico_pipeline.runtime.ClusterDomainGate`); this one is the fallback.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.Semaphore] = {}
        self._last_start: dict[str, float] = defaultdict(float)

    def acquire(self, host: str, concurrency: int, interval_s: float) -> threading.Semaphore:
        with self._lock:
            sem = self._semaphores.setdefault(host, threading.Semaphore(max(1, concurrency)))
        sem.acquire()
        with self._lock:
            wait = self._last_start[host] + interval_s - time.monotonic()
            self._last_start[host] = max(time.monotonic(), self._last_start[host] + interval_s)
        if wait > 0:
            time.sleep(wait)
        return sem


_GATE = _DomainGate()


class DownloadStage(Stage):
    name = "download"
    schema = VIDEOS_SCHEMA

    def __init__(self, config, media_root: str, gate=None):
        super().__init__(config)
        self.dl = config.download
        self.allow_local = config.sources.allow_local
        self.media_root = media_root
        # Per-domain caps: this process's gate, or one the executor shares across processes and nodes.
        self.gate = gate or _GATE
        self.policy = EgressPolicy(self.dl.allowed_networks)
        self._cookies: str | None = None

    def safe_process(self, item: dict, item_id: str, source: str):
        """Every row and error leaves this stage with its source and message redacted."""
        for row in super().safe_process(item, item_id, redact_text(source)):
            if isinstance(row, ErrorRow):
                row.source, row.message = redact_text(row.source), redact_text(row.message)
            else:
                row["source"], row["title"] = redact_text(row["source"]), redact_text(row["title"])
            yield row

    def cookies_copy(self) -> str | None:
        """A private copy of the cookies file for this worker: yt-dlp writes cookies back into the file
        it reads, which must never be the shared (often read-only) original."""
        if not self.dl.cookies_file:
            return None
        if self._cookies is None or not os.path.exists(self._cookies):
            fd, path = tempfile.mkstemp(prefix="vico-cookies-", suffix=".txt")  # mode 0600
            with os.fdopen(fd, "wb") as out, open(self.dl.cookies_file, "rb") as original:
                shutil.copyfileobj(original, out)
            self._cookies = path
        return self._cookies

    def close(self) -> None:
        if self._cookies and os.path.exists(self._cookies):
            os.remove(self._cookies)
        self._cookies = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        source = item["url"]
        kind = source_kind(source)
        vid = video_id_for(source) if kind != "invalid" else f"line-{item.get('line')}"
        if kind == "invalid":
            yield ErrorRow(vid, source, "bad_manifest_line", f"manifest line {item.get('line')} is not a URL or a path: {source[:80]!r}")
            return
        try:
            if kind == "file":
                if not self.allow_local:
                    raise DownloadRejected("local_not_allowed", "local paths are not allowed by this config (sources.allow_local: false)")
                yield self._local(source, item)
            elif kind == "store":
                yield self._from_store(source, item)
            else:
                yield from self._from_url(source, item)
        except (DownloadRejected, MediaError) as exc:
            yield ErrorRow(vid, source, exc.error_type, str(exc))

    # -- sources -------------------------------------------------------------
    def _local(self, source: str, item: dict) -> dict:
        path = os.path.abspath(local_path(source))
        if not os.path.isfile(path):
            raise DownloadRejected("missing", f"no such file: {path}")
        size = os.path.getsize(path)
        self._check_size(size)
        return self._video_row(source, path, path, size, item, {})

    def _from_store(self, source: str, item: dict) -> dict:
        bucket = urlsplit(source).netloc
        if self.dl.allowed_buckets and bucket not in self.dl.allowed_buckets:
            raise DownloadRejected("forbidden_bucket", f"bucket {bucket} is not in download.allowed_buckets")
        fs, path = storage.fs_and_path(source)
        if not fs.exists(path):
            raise DownloadRejected("missing", f"no such object: {source}")
        size = fs.size(path)
        self._check_size(size)
        with storage.local_copy(source) as local:
            return self._store_media(source, local, size, item, {})

    def _from_url(self, source: str, item: dict) -> Iterator[dict | ErrorRow]:
        import yt_dlp

        try:
            self.policy.check_url(source)
        except ForbiddenAddress as exc:
            raise DownloadRejected("forbidden_address", str(exc)) from None
        entries, more = self._expand(source)
        if more:
            yield ErrorRow(video_id_for(source), source, "too_many_entries",
                           f"the playlist has more than {len(entries)} entries; kept the first "
                           f"{len(entries)} (download.max_playlist_entries)")
        for entry_source, info in entries:
            vid = video_id_for(entry_source)
            try:
                self.policy.check_url(entry_source)  # each entry again: a feed may name internal hosts
                with tempfile.TemporaryDirectory(prefix="vico-dl-") as tmp:
                    path, info = self._download(entry_source, info, tmp)
                    size = os.path.getsize(path)
                    self._check_size(size)
                    yield self._store_media(entry_source, path, size, item, info)
            except (DownloadRejected, MediaError) as exc:
                yield ErrorRow(vid, entry_source, exc.error_type, str(exc))
            except ForbiddenAddress as exc:
                yield ErrorRow(vid, entry_source, "forbidden_address", str(exc))
            except yt_dlp.utils.YoutubeDLError as exc:
                message = _clean(str(exc))
                yield ErrorRow(vid, entry_source, classify(message), message)

    def _ydl_options(self, tmp: str | None) -> dict:
        self._logger = _QuietLogger()
        height = self.dl.max_height
        opts = {
            "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": False,
            "socket_timeout": self.dl.timeout_s, "retries": 1, "fragment_retries": 2,
            "ffmpeg_location": ffmpeg_exe(), "max_filesize": self.dl.max_bytes,
            # Every request in this thread where yt-dlp can, so the socket guard sees it; the rest goes
            # to ffmpeg, behind the egress proxy: http(s) only, and at most max_duration_s (live).
            "concurrent_fragment_downloads": 1, "hls_prefer_native": True,
            "external_downloader_args": {"ffmpeg_i": ["-protocol_whitelist", FFMPEG_PROTOCOLS],
                                         "ffmpeg_o": ["-t", f"{self.dl.max_duration_s:g}"]},
            # max_filesize trusts Content-Length; this counts the bytes that arrive.
            "progress_hooks": [self._count_bytes],
            "playlistend": self.dl.max_playlist_entries + 1,
            # Prefer H.264 in MP4 up to the configured height; anything playable otherwise.
            "format": f"bv*[height<=?{height}]+ba/b[height<=?{height}]/bv*+ba/b",
            "format_sort": [f"res:{height}", "vcodec:h264", "ext:mp4:m4a"],
            "merge_output_format": "mp4",
            "logger": self._logger,
            "extract_flat": False,
        }
        if tmp:
            opts["outtmpl"] = os.path.join(tmp, "video.%(ext)s")
        if self.dl.cookies_file:
            opts["cookiefile"] = self.cookies_copy()
        return opts

    def _count_bytes(self, progress: dict) -> None:
        received = progress.get("downloaded_bytes") or 0
        if received > self.dl.max_bytes:
            raise DownloadRejected("too_large", f"received over download.max_bytes={self.dl.max_bytes} bytes")

    def _expand(self, source: str) -> tuple[list[tuple[str, dict | None]], bool]:
        """A playlist (or a page with several videos) -> its first max_playlist_entries entries, and
        whether it had more; else the source itself."""
        import yt_dlp

        try:
            info = self._with_retries(source, lambda: yt_dlp.YoutubeDL(
                {**self._ydl_options(None), "extract_flat": "in_playlist"}).extract_info(source, download=False, process=False))
        except (yt_dlp.utils.YoutubeDLError, DownloadRejected):
            return [(source, None)], False  # the download attempt reports the error
        if info.get("_type") not in ("playlist", "multi_video"):
            return [(source, None)], False
        cap = self.dl.max_playlist_entries
        listed = list(itertools.islice(info.get("entries") or [], cap + 1))
        out = []
        for index, entry in enumerate(listed[:cap]):
            if not entry:
                continue
            formats = entry.get("formats") or []
            # An embedded video with one file is addressed by that file's URL.
            url = entry.get("url") or (formats[0].get("url") if len(formats) == 1 else entry.get("webpage_url"))
            if url and source_kind(url) == "url" and normalise_source(url) != normalise_source(source):
                out.append((url, None))
            else:
                out.append((f"{source}{'&' if '?' in source else '?'}vico_entry={index}", entry))
        return (out or [(source, None)]), len(listed) > cap

    def _download(self, source: str, entry: dict | None, tmp: str) -> tuple[str, dict]:
        import yt_dlp

        def attempt():
            for name in os.listdir(tmp):
                os.remove(os.path.join(tmp, name))
            with yt_dlp.YoutubeDL(self._ydl_options(tmp)) as ydl:
                if entry is not None:  # an entry of a page that is not addressable by itself
                    info = ydl.process_ie_result(dict(entry), download=False)
                else:
                    info = ydl.extract_info(source, download=False)
                if is_live(info) and not self.dl.allow_live:
                    raise DownloadRejected("live_not_allowed", "a live stream: refused (download.allow_live: "
                                                               "true records at most download.max_duration_s of it)")
                duration = info.get("duration")
                if duration and duration > self.dl.max_duration_s:
                    raise DownloadRejected("too_long", f"video is {duration:.0f} s, over download.max_duration_s={self.dl.max_duration_s:.0f}")
                size = info.get("filesize") or info.get("filesize_approx")
                if size:
                    self._check_size(size)
                info = ydl.process_ie_result(info, download=True)
                # Issue 11: the subtitles of download.subtitles, stored beside the video (under this egress guard).
                fetch_subtitles(info, ydl.params, self.dl.subtitles, self.media_root, video_id_for(source))
            files = [f for f in os.listdir(tmp) if not f.endswith((".part", ".ytdl"))]
            if not files:
                if any("max-filesize" in line for line in self._logger.lines):
                    raise DownloadRejected("too_large", f"the file is over download.max_bytes={self.dl.max_bytes}")
                raise DownloadRejected("download_failed", "yt-dlp wrote no file: " + " | ".join(self._logger.lines[-2:]))
            return os.path.join(tmp, max(files, key=lambda f: os.path.getsize(os.path.join(tmp, f)))), info

        return self._with_retries(source, attempt)

    def _with_retries(self, source: str, fn):
        import yt_dlp

        host = urlsplit(source).netloc
        guard_subprocesses("yt_dlp")  # its ffmpeg runs behind the proxy, in its own process group
        # One total deadline for every request of this download, retries and backoff included; its
        # subprocesses' requests go through the proxy, and die with the guard.
        with EgressGuard(self.policy, self.dl.deadline_s, proxy=EgressProxy(self.policy)) as guard:
            for attempt in range(self.dl.retries + 1):
                gate = self.gate.acquire(host, self.dl.per_domain_concurrency, self.dl.per_domain_interval_s)
                try:
                    result = fn()
                    _refused(guard)  # a refused segment makes the whole download forbidden, file or not
                    return result
                except (yt_dlp.utils.YoutubeDLError, OSError) as exc:
                    _refused(guard)
                    if guard.expired:
                        raise DownloadRejected("timeout", f"the download took over download.deadline_s="
                                                          f"{self.dl.deadline_s:g} s") from None
                    if "forbidden_address" in str(exc):
                        raise DownloadRejected("forbidden_address", _forbidden(str(exc))) from None
                    if not isinstance(exc, yt_dlp.utils.YoutubeDLError) or classify(str(exc)) not in TRANSIENT \
                            or attempt == self.dl.retries:
                        raise
                finally:
                    gate.release()
                # Exponential backoff with jitter, so many workers do not retry in step.
                delay = self.dl.backoff_s * (2 ** attempt) * (0.5 + random.random())
                if delay >= guard.remaining():
                    raise DownloadRejected("timeout", f"no time left for another try within download.deadline_s="
                                                      f"{self.dl.deadline_s:g} s")
                time.sleep(delay)

    # -- common --------------------------------------------------------------
    def _check_size(self, size: int) -> None:
        if size == 0:
            raise DownloadRejected("empty_file", "the file is empty (0 bytes)")
        if size > self.dl.max_bytes:
            raise DownloadRejected("too_large", f"{size} bytes, over download.max_bytes={self.dl.max_bytes}")

    def _store_media(self, source: str, local: str, size: int, item: dict, info: dict) -> dict:
        vid = video_id_for(source)
        ext = os.path.splitext(local)[1] or ".mp4"
        meta = probe(local, self.dl.probe_deadline_s)  # before storing: a non-video never reaches the media folder
        target = storage.join(self.media_root, vid + ext)
        storage.upload_file(local, target)
        return self._video_row(source, local, target, size, item, info, meta)

    def _video_row(self, source, local, media_path, size, item, info, meta=None) -> dict:
        meta = meta or probe(local, self.dl.probe_deadline_s)
        # A live recording was cut by ffmpeg at max_duration_s (-t); copying whole packets ends it a frame later.
        if meta.duration_s > self.dl.max_duration_s and not is_live(info):
            raise DownloadRejected("too_long", f"video is {meta.duration_s:.0f} s, over download.max_duration_s={self.dl.max_duration_s:.0f}")
        return {
            "video_id": video_id_for(source),
            "source": source,
            "title": item.get("title") or info.get("title") or os.path.basename(urlsplit(source).path) or source,
            "uploader": info.get("uploader"),
            "upload_date": info.get("upload_date"),
            "license": info.get("license"),
            "has_subtitles": bool(info.get("subtitles") or info.get("automatic_captions") or meta.subtitle_streams),
            "duration_s": meta.duration_s, "declared_duration_s": meta.declared_duration_s,
            "fps": meta.fps, "width": meta.width, "height": meta.height,
            "rotation": meta.rotation, "codec": meta.codec, "variable_frame_rate": meta.variable_frame_rate,
            "has_audio": meta.has_audio, "bytes": size, "media_path": media_path, "status": "ok",
        }


class _QuietLogger:
    """yt-dlp talks through this; we keep its last lines to explain a missing file."""

    def __init__(self):
        self.lines: list[str] = []

    def debug(self, msg):
        self.lines = (self.lines + [str(msg)])[-50:]

    info = warning = error = debug


def _refused(guard: EgressGuard) -> None:
    """DownloadRejected when the policy refused any request of this download, ours or a subprocess's:
    yt-dlp skips an unavailable fragment and ffmpeg a failed segment, so a file may exist anyway."""
    refused = guard.refused + (guard.proxy.refused if guard.proxy is not None else [])
    if refused:
        raise DownloadRejected("forbidden_address", _forbidden(refused[0]))


def _forbidden(message: str) -> str:
    """The egress policy's own words out of an HTTP client's wrapped error."""
    found = re.search(r"forbidden_address: [^)'\"\]]+", message)
    return found.group(0).strip() if found else _clean(message)


def _clean(message: str) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)
    return message.replace("ERROR: ", "").strip().splitlines()[0][:300]
