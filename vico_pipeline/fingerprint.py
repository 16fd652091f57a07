"""Fingerprints: what decides a stage's output, hashed.

A stage's fingerprint covers the config keys its spec names, its code version
and its inputs' fingerprints, so a change re-runs that stage and everything
downstream of it, and nothing upstream.
"""
from __future__ import annotations

import hashlib
import json

from vico_pipeline.config import config_value, to_plain


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fingerprints(config, specs) -> dict[str, str]:
    plain = to_plain(config)
    out: dict[str, str] = {}
    for spec in specs:
        inputs = spec.inputs + spec.used_optional(config, out)
        out[spec.name] = digest({
            "stage": spec.name,
            "code": spec.code_version,
            "config": {key: config_value(plain, key) for key in spec.config_keys},
            "inputs": {name: out[name] for name in inputs},
        })
    return out


# Keys that decide where and how fast a run goes, never what it writes.
_RUNTIME_ONLY = {"num_cpus", "num_gpus", "concurrency", "replicas", "ffmpeg_threads",
                 "per_domain_concurrency", "per_domain_interval_s", "progress", "runner", "accelerator_type"}


def _without_runtime(node):
    if isinstance(node, dict):
        return {k: _without_runtime(v) for k, v in node.items() if k not in _RUNTIME_ONLY}
    return node


def version_fingerprint(config, manifest_rows: list[dict], specs) -> str:
    """A version's fingerprint: the resolved config (output location, version name, where it
    runs and the model/train/eval/export sections excluded), the manifest's content, the code
    version (the package's and each of `specs`' code_version)."""
    from vico_pipeline import __version__

    plain = to_plain(config)
    for section in ("output", "ray", "model", "train", "eval", "export"):
        plain.pop(section, None)
    plain["dataset"].pop("version", None)
    manifest = [{k: row.get(k) for k in ("url", "id", "title")} for row in manifest_rows]
    code = {"package": __version__, "stages": {s.name: s.code_version for s in specs}}
    return digest({"config": _without_runtime(plain), "manifest": manifest, "code": code})
