"""Reading a manifest of sources, and the stable id of a source.

A manifest is a `.txt` file (one URL or path a line, `#` comments) or a `.csv`,
`.jsonl` or `.parquet` table with a `url` column (optional `id`, `title`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from urllib.parse import urlsplit, urlunsplit

from vico_pipeline.errors import ManifestError


REMOTE_SCHEMES = ("http", "https")
STORE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "hdfs")


def source_kind(source: str) -> str:
    """'url', 'file' (file:// or a path), 'store' (object storage) or 'invalid'."""
    text = source.strip()
    if not text:
        return "invalid"
    scheme = urlsplit(text).scheme.lower()
    if scheme in REMOTE_SCHEMES:
        return "url" if urlsplit(text).netloc else "invalid"
    if scheme == "file":
        return "file"
    if scheme in STORE_SCHEMES:
        return "store"
    if scheme and len(scheme) > 1:  # 'ftp:', 'mailto:', ... (one letter is a Windows drive)
        return "invalid"
    if any(ch in text for ch in "\n\r\t") or " " in text.strip() and not os.path.exists(text):
        return "invalid"
    return "file"


def normalise_source(source: str) -> str:
    """The canonical spelling of a source: what `video_id` hashes."""
    text = source.strip()
    kind = source_kind(text)
    if kind == "file":
        path = text[len("file://"):] if text.lower().startswith("file://") else text
        return "file://" + os.path.abspath(os.path.expanduser(path))
    parts = urlsplit(text)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def video_id_for(source: str) -> str:
    """Stable id of a source across runs and versions (never a title)."""
    return hashlib.sha1(normalise_source(source).encode()).hexdigest()[:16]


def local_path(source: str) -> str:
    text = source.strip()
    return os.path.expanduser(text[len("file://"):] if text.lower().startswith("file://") else text)


def read_manifest(path: str) -> list[dict]:
    """Rows of {url, id, title, line}; raises ManifestError for a missing or empty manifest."""
    from vico_pipeline import storage

    try:  # through storage: a scheme whose package is missing (s3fs) is one line with its install
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except OSError as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        elif lower.endswith(".jsonl"):
            rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        elif lower.endswith(".csv"):
            rows = list(csv.DictReader(io.StringIO(data.decode())))
        else:
            rows = [{"url": line.strip()} for line in data.decode(errors="replace").splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} cannot be parsed: {exc}") from None
    if rows and "url" not in rows[0]:
        raise ManifestError(f"manifest {path} has no 'url' column")
    out = []
    for number, row in enumerate(rows, start=1):
        url = str(row.get("url") or "").strip()
        out.append({"url": url, "id": row.get("id") or None, "title": row.get("title") or None, "line": number})
    if not out:
        raise ManifestError(f"manifest {path} lists no sources")
    return out
