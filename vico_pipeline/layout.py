"""The one place that knows where things live under `output.root`.

    {root}/{name}/{version}/            a version (contract.md)
        manifest.json README.md videos/ clips/ filtered/ ... errors/ shards/
    {root}/{name}/_stages/{stage}-{fp}/ one stage's cached output, shared by versions
        parts/{unit}.parquet            rows of one unit (a video, or a manifest line for download)
        errors/{unit}.parquet           its error rows, written before the part
        media/ clips/                   downloaded videos, optional clip files
"""
from __future__ import annotations

import re

from vico_pipeline.storage import join

TABLES = ("videos", "clips", "shots", "filtered", "captions", "summaries", "subtitles", "clue_candidates", "clues", "questions", "errors")
MANIFEST = "manifest.json"


def dataset_dir(root: str, name: str) -> str:
    return join(root, name)


def version_dir(root: str, name: str, version: str) -> str:
    return join(root, name, version)


def stage_dir(root: str, name: str, stage: str, fingerprint: str) -> str:
    return join(root, name, "_stages", f"{stage}-{fingerprint}")


def part_uri(stage_root: str, unit: str) -> str:
    return join(stage_root, "parts", f"{unit}.parquet")


def errors_uri(stage_root: str, unit: str) -> str:
    return join(stage_root, "errors", f"{unit}.parquet")


def table_dir(version_root: str, table: str) -> str:
    return join(version_root, table)


def shards_dir(version_root: str, split: str) -> str:
    return join(version_root, "shards", split)


_VERSION = re.compile(r"^v(\d+)$")


def version_number(name: str) -> int | None:
    match = _VERSION.match(name)
    return int(match.group(1)) if match else None
