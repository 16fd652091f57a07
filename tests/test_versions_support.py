"""Shared by the version, resume, export and report tests (no tests here).

`demo_version` builds ONE demo version per test session (2 one-minute videos,
describe + template engines) in the session's base temp folder and returns it;
later callers find it complete there.
"""
from __future__ import annotations

import os

import pyarrow.dataset as pads

DEMO_SETTINGS = ["ray.progress=false"]


def demo_videos(base: str) -> str:
    from vico_pipeline.demo import make_demo_videos

    manifest = os.path.join(base, "demo-videos", "manifest.txt")
    if not os.path.exists(manifest):
        make_demo_videos(os.path.join(base, "demo-videos"), count=2, minutes=2, seed=0)
    return manifest


def demo_config(manifest: str, root: str, *settings: str):
    from vico_pipeline.config import load_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_config(os.path.join(repo, "configs", "demo.yaml"),
                       [f"sources.manifest={manifest}", f"output.root={root}", *DEMO_SETTINGS, *settings])


def demo_version(tmp_path_factory) -> str:
    """The session's clean demo version (built in this process on first use)."""
    import ray

    from vico_pipeline.run import run
    from vico_pipeline.versions import is_complete

    base = str(tmp_path_factory.getbasetemp())
    root = os.path.join(base, "demo-clean")
    path = os.path.join(root, "demo", "v1")
    if not is_complete(path):
        started = not ray.is_initialized()
        try:
            path = run(demo_config(demo_videos(base), root), log=lambda msg: None)
        finally:
            if started:
                ray.shutdown()
    return path


def read_table(version: str, table: str):
    return pads.dataset(os.path.join(version, table), format="parquet").to_table()


def rows_by_id(version: str, table: str, key) -> dict:
    """{id: row} of a version's table; `key` names the id column(s)."""
    rows = read_table(version, table).to_pylist()
    keys = (key,) if isinstance(key, str) else key
    out = {tuple(r[k] for k in keys): r for r in rows}
    assert len(out) == len(rows), f"{table}: duplicate ids"
    return out
