"""`vico versions`: list a dataset's versions, show one, diff two.

    vico versions ROOT/NAME                 id, status, created, fingerprint, row counts
    vico versions show VERSION_DIR [--json] the manifest (a summary, or the JSON itself)
    vico versions diff A B [--json]         config keys changed, counts, stages re-run and reused

In `diff`, B may be a bare version name (`v2`) next to A, and the other way round.
"""
from __future__ import annotations

import json
import sys

from vico_pipeline import storage
from vico_pipeline.errors import RunError
from vico_pipeline.versions import list_versions, open_version

USAGE = "usage: vico versions ROOT/NAME | vico versions show VERSION_DIR [--json] | vico versions diff A B [--json]"
# Config keys that change only how a run is shown, never what it writes: not a difference.
DISPLAY_ONLY = ("ray.progress", "ray.status_every_s")
COUNTED = ("videos", "clips", "captions", "clues", "questions", "errors", "shards")


def main(args: list[str]) -> int:
    if "-h" in args or "--help" in args:
        print(USAGE)
        return 0
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    try:
        if args and args[0] == "show" and len(args) == 2:
            print(show(args[1], as_json))
        elif args and args[0] == "diff" and len(args) == 3:
            print(diff(args[1], args[2], as_json))
        elif len(args) == 1 and args[0] not in ("show", "diff"):
            print(listing(args[0], as_json))
        else:
            print(f"vico: error: {USAGE}", file=sys.stderr)
            return 2
    except RunError as exc:
        print(f"vico: error: {exc}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- list
def listing(dataset_root: str, as_json: bool = False) -> str:
    dataset_root = dataset_root.rstrip("/")
    if not storage.exists(dataset_root):
        raise RunError(f"no such dataset folder: {dataset_root}")
    versions = list_versions(dataset_root)
    if not versions and storage.exists(storage.join(dataset_root, "manifest.json")):
        raise RunError(f"{dataset_root} is a version folder; list its dataset ({dataset_root.rsplit('/', 1)[0]}) "
                       f"or use `vico versions show {dataset_root}`")
    rows = []
    for v in versions:
        m = v["manifest"]
        rows.append({"version": v["version"], "status": v["status"], "created": (m.get("created") or "")[:19],
                     "fingerprint": m.get("fingerprint", ""),
                     **{t: m.get("tables", {}).get(t, {}).get("rows", "") for t in COUNTED}})
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return f"no versions in {dataset_root}"
    header = ["version", "status", "created", "fingerprint", *COUNTED]
    return _table(header, [[str(r[h]) for h in header] for r in rows])


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- show
def show(version_root: str, as_json: bool = False) -> str:
    manifest = open_version(version_root)
    if as_json:
        return json.dumps(manifest, indent=2)
    lines = [f"{manifest['dataset']} {manifest['version']}  ({version_root.rstrip('/')})",
             f"status       {manifest['status']}",
             f"fingerprint  {manifest['fingerprint']}   code {manifest.get('code_version')}",
             f"created      {manifest.get('created')}   finished {manifest.get('finished')}   "
             f"({manifest.get('seconds')} s{', resumed' if manifest.get('resumed') else ''})",
             f"sources      {manifest.get('manifest_source')} ({manifest.get('manifest_lines')} lines)", "",
             "tables"]
    lines += ["  " + line for line in _table(
        ["table", "rows", "bytes", "files"],
        [[t, str(c["rows"]), str(c["bytes"]), str(c.get("files", ""))]
         for t, c in manifest.get("tables", {}).items()]).splitlines()]
    lines += ["", "stages"]
    lines += ["  " + line for line in _table(
        ["stage", "in", "out", "failed", "cached", "seconds", "reused from"],
        [[s, str(st.get("items_in")), str(st.get("items_out")), str(st.get("failed")), str(st.get("cached")),
          str(st.get("seconds")), _reused_text(manifest.get("reused", {}).get(s))]
         for s, st in manifest.get("stages", {}).items()]).splitlines()]
    shards = manifest.get("shards", [])
    lines += ["", "shards"]
    for split in ("train", "val"):
        mine = [s for s in shards if s["split"] == split]
        lines.append(f"  {split}: {sum(s['rows'] for s in mine)} samples, {len(mine)} files, "
                     f"{sum(s['bytes'] for s in mine)} bytes")
    lines += ["", "(--json for the whole manifest)"]
    return "\n".join(lines)


def _reused_text(reused: dict | None) -> str:
    if not reused:
        return ""
    origin = reused.get("version") or "interrupted run"
    return f"{origin} ({reused.get('videos')}/{reused.get('of')} videos)"


# --------------------------------------------------------------------------- diff
def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _resolve(path: str, other: str) -> str:
    """A bare version name next to the other version's folder."""
    if storage.exists(path) or "/" in path.rstrip("/"):
        return path
    return storage.join(other.rstrip("/").rsplit("/", 1)[0], path)


def diff_data(a_root: str, b_root: str) -> dict:
    a_root, b_root = _resolve(a_root, b_root), _resolve(b_root, a_root)
    a, b = open_version(a_root), open_version(b_root)
    fa, fb = _flatten(a.get("config", {})), _flatten(b.get("config", {}))
    config = {key: [fa.get(key), fb.get(key)] for key in sorted(set(fa) | set(fb))
              if fa.get(key) != fb.get(key) and key not in DISPLAY_ONLY}
    tables = sorted(set(a.get("tables", {})) | set(b.get("tables", {})),
                    key=lambda t: COUNTED.index(t) if t in COUNTED else 99)
    counts = {t: [a.get("tables", {}).get(t, {}).get("rows"), b.get("tables", {}).get(t, {}).get("rows")]
              for t in tables}
    sa, sb = a.get("stage_fingerprints", {}), b.get("stage_fingerprints", {})
    stages = {s: ("same" if sa.get(s) == sb.get(s) else "changed") for s in list(dict.fromkeys([*sa, *sb]))}
    return {"a": a["version"], "b": b["version"], "fingerprints": [a["fingerprint"], b["fingerprint"]],
            "config": config, "counts": counts, "stages": stages, "reused": b.get("reused", {}),
            "manifest_lines": [a.get("manifest_lines"), b.get("manifest_lines")]}


def diff(a_root: str, b_root: str, as_json: bool = False) -> str:
    d = diff_data(a_root, b_root)
    if as_json:
        return json.dumps(d, indent=2)
    a, b = d["a"], d["b"]
    lines = [f"{a} -> {b}   fingerprint {d['fingerprints'][0]} -> {d['fingerprints'][1]}", "", "config"]
    lines += [f"  {k}: {json.dumps(va)} -> {json.dumps(vb)}" for k, (va, vb) in d["config"].items()] or ["  (no change)"]
    if d["manifest_lines"][0] != d["manifest_lines"][1]:
        lines.append(f"  manifest lines: {d['manifest_lines'][0]} -> {d['manifest_lines'][1]}")
    lines += ["", "counts"]
    lines += [f"  {t}: {va} -> {vb}" + (f" ({vb - va:+d})" if isinstance(va, int) and isinstance(vb, int) and va != vb else "")
              for t, (va, vb) in d["counts"].items()]
    lines += ["", f"stages in {b}"]
    for stage, state in d["stages"].items():
        reused = d["reused"].get(stage)
        how = f"reused from {_reused_text(reused)}" if reused else "ran"
        lines.append(f"  {stage}: {'same settings' if state == 'same' else 'settings changed'}, {how}")
    return "\n".join(lines)
