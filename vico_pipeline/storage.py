"""Reading and writing under `output.root`, on a local disk or an object store.

Every write is atomic: a local file is written under a temporary name and
renamed; an object-store object is one PUT (or one completed multipart upload),
which is atomic by itself. So a reader never sees half a file, and a file that
exists is complete.

Object stores: `s3://bucket/prefix` through s3fs, credentials and endpoint from
the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN
or an instance role; AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or
FSSPEC_S3_ENDPOINT_URL for MinIO, Ceph, R2 or a test server). Listings are not
cached: several workers write the same prefixes, and a stale "does not exist"
would make a worker redo a part another one finished.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from vico_pipeline.errors import UserError


S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")


def storage_options(uri: str) -> dict:
    """fsspec options for `uri`'s filesystem, read from the environment."""
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if protocol not in ("s3", "s3a"):
        return {}
    options: dict = {"use_listings_cache": False}
    endpoint = next((os.environ[v] for v in S3_ENDPOINT_VARIABLES if os.environ.get(v)), None)
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


# The package fsspec needs for a URI scheme, and the vico extra that installs it (None: no extra).
SCHEME_PACKAGES = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", None), "gcs": ("gcsfs", None),
                   "az": ("adlfs", None), "abfs": ("adlfs", None), "abfss": ("adlfs", None)}


def missing_package(uri: str, exc: ImportError) -> UserError:
    """One line with the install command for a URI whose filesystem package is not installed."""
    scheme = uri.split("://", 1)[0].lower()
    package, extra = SCHEME_PACKAGES.get(scheme, (getattr(exc, "name", None) or f"the {scheme} filesystem", None))
    install = f"pip install -e '.[{extra}]'" if extra else f"pip install {package}"
    what = f"the {extra} extra ({package} not installed)" if extra else f"{package} (not installed)"
    return UserError(f"{uri} needs {what}; install it from the vico checkout with: {install}")


def fs_and_path(uri: str):
    try:
        return url_to_fs(uri, **storage_options(uri))
    except ImportError as exc:  # fsspec imports a scheme's package on first use (s3fs for s3://)
        raise missing_package(uri, exc) from None


def pyarrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for `uri`, configured as `fs_and_path` is (for Ray Data / pyarrow readers)."""
    import pyarrow.fs as pafs

    if is_local(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    fs, path = fs_and_path(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The filesystem path of a local uri (a plain path, or file://...)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(root: str, *parts: str) -> str:
    out = root.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def exists(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    """A folder on a local disk; on an object store (no folders) a check that the bucket is there."""
    fs, path = fs_and_path(uri)
    if is_local(uri):
        fs.makedirs(path, exist_ok=True)
        return
    bucket = path.split("/", 1)[0]
    try:
        found = fs.exists(bucket)
    except PermissionError as exc:
        raise PermissionError(errno.EACCES, f"access denied to bucket {bucket} ({exc})") from None
    if not found:
        raise FileNotFoundError(errno.ENOENT, f"no bucket named {bucket}")


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under `uri`; empty when it does not exist."""
    fs, path = fs_and_path(uri)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


def remove(uri: str) -> None:
    if is_local(uri):
        # Not fsspec's local rm: it calls os.getcwd(), which fails in a process whose working
        # folder was removed (a Ray job's unpacked package folder can be).
        path = local_path(uri)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = fs_and_path(uri)
    if is_local(uri):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)  # a full disk or a kill mid-write leaves no temp file behind
            raise
    else:
        fs.pipe_file(path, data)  # one PUT


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create `uri` holding `data` only if nothing is there yet; False when it exists.

    O_CREAT|O_EXCL on a local disk; on S3 a conditional PUT (If-None-Match: *), which the
    store refuses (412) when the key exists. Exactly one of several racing callers gets True."""
    fs, path = fs_and_path(uri)
    if is_local(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            _discard(path)
            raise
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def sweep_temp_files(root: str, older_than: float) -> int:
    """Removes the temp files (`.tmp-*`, see write_bytes) under a local folder last written before
    `older_than` (a time.time()): a SIGKILL between a temp file's creation and its rename leaves
    one behind. Newer ones may be another write still under way and are kept. Returns how many
    were removed; object stores write with one PUT and have none."""
    if not is_local(root):
        return 0
    removed = 0
    for folder, _, names in os.walk(fs_and_path(root)[1]):
        for name in names:
            path = os.path.join(folder, name)
            try:
                if name.startswith(".tmp-") and os.stat(path).st_mtime < older_than:
                    os.remove(path)
                    removed += 1
            except OSError:
                pass
    return removed


def _discard(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def read_bytes(uri: str) -> bytes:
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()


def json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False, default=str).encode()


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json_bytes(obj))


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_parquet(table: pa.Table, uri: str, row_group_size: Optional[int] = None) -> int:
    """Write `table` atomically; returns the bytes written."""
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size, compression="zstd")
    data = sink.getvalue()
    write_bytes(uri, data)
    return len(data)


def read_parquet(uris: list[str], schema: Optional[pa.Schema] = None, skip: tuple[str, ...] = ()) -> pa.Table:
    """The files as one table; columns named in `skip` are never read from disk."""
    tables = []
    for uri in uris:
        fs, path = fs_and_path(uri)
        with fs.open(path, "rb") as handle:
            if skip:
                names = pq.ParquetFile(handle).schema_arrow.names
                tables.append(pq.read_table(handle, columns=[n for n in names if n not in skip]))
            else:
                tables.append(pq.read_table(handle))
    if not tables:
        if schema is None:
            raise ValueError("no parquet files to read and no schema given")
        return schema.empty_table()
    if schema is not None:
        tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables, promote_options="permissive")


def parquet_rows(uri: str) -> int:
    """Row count from the footer, without reading the data."""
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def upload_file(local: str, uri: str) -> None:
    """Copy a local file to `uri` (rename when both are on the local disk)."""
    fs, path = fs_and_path(uri)
    if is_local(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise
    else:
        fs.put_file(local, path)


def rename_dir(src: str, dst: str) -> None:
    """Put folder `src` in the place of folder `dst`: on a local disk, renames, so a reader of `dst`
    sees the old folder or the new one whole; on an object store (no renames), a copy."""
    if is_local(src):
        src_path, dst_path = local_path(src), local_path(dst)
        old = None
        if os.path.exists(dst_path):
            old = f"{os.path.dirname(dst_path)}/.old-{uuid.uuid4().hex[:8]}-{os.path.basename(dst_path)}"
            os.rename(dst_path, old)
        os.rename(src_path, dst_path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    fs, src_path = fs_and_path(src)
    _, dst_path = fs_and_path(dst)
    remove(dst)
    fs.copy(src_path, dst_path, recursive=True)
    fs.rm(src_path, recursive=True)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path for `uri`: itself when local, else a temporary download."""
    if is_local(uri):
        yield local_path(uri)
        return
    fs, path = fs_and_path(uri)
    with tempfile.TemporaryDirectory(prefix="vico-") as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        fs.get_file(path, local)
        yield local


def open_read(uri: str):
    fs, path = fs_and_path(uri)
    return fs.open(path, "rb")


def unwritable(folder: str) -> str | None:
    """Why nothing can be written into `folder` (created when missing), or None when it can.

    A local folder is tried with a file written and removed (root ignores permission bits, a
    read-only mount or a path under a file does not); on an object store the bucket must exist."""
    try:
        makedirs(folder)
        if is_local(folder):
            fd, probe = tempfile.mkstemp(prefix=".vico-write-test-", dir=local_path(folder))
            os.close(fd)
            os.remove(probe)
    except (FileExistsError, NotADirectoryError):
        return "a file is in the way of that folder"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_writable(folder: str, what: str) -> None:
    """Raise one line naming the path when `folder` cannot be written (`what`: the option or key)."""
    reason = unwritable(folder)
    if reason:
        raise UserError(f"{what} is not writable: {folder} ({reason})")
