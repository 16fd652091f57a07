"""Finding, opening and comparing the versions of a dataset.

A version folder is complete when its manifest.json says `"status": "complete"`;
every reader here refuses anything else. The run that writes a version is `run.py`.
"""
from __future__ import annotations

from vico_pipeline import layout, storage
from vico_pipeline.errors import RunError

CLAIM = ".claim.json"


def list_versions(dataset_root: str) -> list[dict]:
    """Every version folder with its manifest (or status 'incomplete'); files beside them are not versions."""
    out = []
    for name in storage.listdir(dataset_root):
        if name.startswith(("_", ".")):
            continue
        path = storage.join(dataset_root, name)
        if not _is_folder(path):
            continue  # a report or a note someone left beside the versions
        manifest = _read_manifest(path)
        out.append({"version": name, "path": path, "manifest": manifest,
                    "status": "complete" if manifest.get("status") == "complete" else "incomplete"})
    return sorted(out, key=lambda v: (layout.version_number(v["version"]) or 1 << 30, v["version"]))


def _is_folder(uri: str) -> bool:
    fs, path = storage.fs_and_path(uri)
    return fs.isdir(path)


def _read_manifest(version_root: str) -> dict:
    path = storage.join(version_root, layout.MANIFEST)
    try:
        manifest = storage.read_json(path)
    except (FileNotFoundError, ValueError, OSError):
        return {}  # missing, or not ours: the version is not complete
    return manifest if isinstance(manifest, dict) else {}


def next_version_name(dataset_root: str) -> str:
    numbers = [layout.version_number(v["version"]) or 0 for v in list_versions(dataset_root)]
    return f"v{max(numbers, default=0) + 1}"


def is_complete(version_root: str) -> bool:
    return _read_manifest(version_root).get("status") == "complete"


def open_version(version_root: str) -> dict:
    """The manifest of a complete version; RunError (one line) for anything else."""
    version_root = version_root.rstrip("/")
    if not storage.exists(version_root):
        raise RunError(f"no such version folder: {version_root}")
    manifest = _read_manifest(version_root)
    if manifest.get("status") != "complete":
        raise RunError(f"{version_root} is not a complete version (no manifest.json with status complete); "
                       "rerun its `vico run` command to finish it")
    return manifest
