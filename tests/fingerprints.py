"""The fingerprints of every shipped pipeline config under a few switches, for one fixed manifest.

tests/data/fingerprints.json holds them as the code last computed them on purpose (the import-layer
refactor, 84be642, computed exactly those of 540d0a9 before it); tests/test_layers.py checks the code
still computes the same, so a refactor that should change nothing reuses every version made before it.
A deliberate change (a stage's code version, a new config key that decides an output) regenerates
the file in the same commit, and its message says why:

    python -m tests.fingerprints > tests/data/fingerprints.json
"""
from __future__ import annotations

import json
import sys

MANIFEST = [{"url": "https://example.com/a.mp4", "id": "a", "title": "A"},
            {"url": "/data/b.mkv", "id": None, "title": None}]
CASES = {
    "default": (None, []),
    "demo": ("configs/demo.yaml", []),
    "local": ("configs/local.yaml", []),
    "cluster": ("configs/cluster.yaml", []),
    "cluster-s3": ("configs/cluster-s3.yaml", []),
    "asr+subtitles": (None, ["asr.enabled=true", "asr.model=whisper", "asr.base_url=http://127.0.0.1:9/v1",
                             "subtitles.enabled=true", "caption.use_subtitles=true"]),
    "blind-off": (None, ["blind.enabled=false"]),
    "openai": (None, ["caption.engine=openai", "caption.model=m", "caption.base_url=http://127.0.0.1:9/v1",
                      "clues.engine=openai", "clues.model=m", "clues.base_url=http://127.0.0.1:9/v1"]),
    "ray_data_llm": (None, ["caption.engine=vllm", "caption.model=m", "caption.runner=ray_data_llm"]),
}


def fingerprints() -> dict:
    """{case: {"stages": stage fingerprints, "version": version fingerprint, "set", "config"}}
    (config paths relative to the repository root)."""
    from vico_pipeline.config import load_config
    from vico_pipeline.fingerprint import stage_fingerprints, version_fingerprint
    from vico_pipeline.registry import stage_specs

    out = {}
    for name, (path, sets) in CASES.items():
        config = load_config(path, sets)
        specs = stage_specs()
        out[name] = {"stages": stage_fingerprints(config, specs), "version": version_fingerprint(config, MANIFEST, specs),
                     "set": sets, "config": path}
    return out


if __name__ == "__main__":
    json.dump(fingerprints(), sys.stdout, indent=1, sort_keys=True)
    print()
