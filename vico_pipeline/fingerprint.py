"""Fingerprints: what decides a stage's output, hashed.

A stage's fingerprint covers the config keys its spec names, its code version
and its inputs' fingerprints, so a change re-runs that stage and everything
downstream of it, and nothing upstream.
"""
from __future__ import annotations

import hashlib
import json

from vico_pipeline.config import to_plain


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_value(plain: dict, dotted: str):
    node = plain
    for part in dotted.split("."):
        node = node[part]
    return node


def stage_fingerprints(config, specs) -> dict[str, str]:
    plain = to_plain(config)
    out: dict[str, str] = {}
    for spec in specs:
        out[spec.name] = digest({
            "stage": spec.name,
            "code": spec.code_version,
            "config": {key: config_value(plain, key) for key in spec.config_keys},
            "inputs": {name: out[name] for name in spec.inputs},
        })
    return out
