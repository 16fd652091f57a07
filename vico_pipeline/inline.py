"""Running the stages in this process, without Ray, when the work left is light.

A regeneration that changes only the clue or question settings finds every
download, frame and caption part cached: what is left is a few milliseconds of
Python per video, and starting Ray (seconds) would be most of the run. So before
starting Ray, `light_work` walks the part files the DAG would read and says
whether only light stages (no model, no GPU, no decoding) have anything to do,
for a bounded number of videos. If so, `run_inline` runs the same `StageRunner`s
as the DAG, one video after the other, in this process; they read and write the
same part files, so the outcome is the same as a run on Ray.

A run of one file whose stages need no model actor or GPU (the demo on one video, a
quick look at a new file) is one video's work from the start: `one_file_work` sends it
here too, download and decode included, and Ray never starts.
"""
from __future__ import annotations

from vico_pipeline import layout, storage
from vico_pipeline.pipeline import DownloadRunner, StageRunner, download_unit, merge_duplicates, transient_failure
from vico_pipeline.registry import stage_specs

HEAVY_STAGES = ("download", "frames")  # network and video decoding: always worth Ray's workers


def runs_in_driver(spec, config) -> bool:
    """A plain task stage (no model actor, no GPU): one the driver can run as a worker would."""
    res = spec.resources(config)
    return not res.get("actor") and not res.get("num_gpus")


def is_light(spec, config) -> bool:
    return spec.name not in HEAVY_STAGES and runs_in_driver(spec, config)


def light_work(manifest_rows: list[dict], config, stage_roots: dict[str, str]) -> dict[str, int] | None:
    """{stage: videos with work} when every stage with work is light and at most
    `ray.inline_max_videos` videos are involved; None when Ray should run the DAG."""
    limit = config.ray.inline_max_videos
    units = list(dict.fromkeys(download_unit(line["url"]) for line in manifest_rows))
    if not limit or len(units) > limit:
        return None
    specs = stage_specs()
    video_ids = []
    for unit in units:
        part = layout.part_uri(stage_roots["download"], unit)
        if not storage.exists(part) or transient_failure(part, layout.errors_uri(stage_roots["download"], unit)):
            return None  # a download to do
        video_ids += storage.read_parquet([part])["video_id"].to_pylist()
        if len(video_ids) > limit:
            return None
    pending: dict[str, int] = {}
    for vid in dict.fromkeys(video_ids):
        reached = {"download"}  # stages whose output this video has, or would have after this run
        for spec in specs[1:]:
            if not all(name in reached for name in spec.inputs):
                continue
            part = layout.part_uri(stage_roots[spec.name], vid)
            if not storage.exists(part):
                if not is_light(spec, config):
                    return None
                pending[spec.name] = pending.get(spec.name, 0) + 1
                reached.add(spec.name)
            elif storage.parquet_rows(part) > 0:
                reached.add(spec.name)
    return pending


def one_file_work(manifest_rows: list[dict], config) -> dict[str, int] | None:
    """{stage: 1} for every stage when the manifest names one local or object-store file and no
    stage needs a model actor or a GPU (`ray.inline_one_file`); None when Ray should run the DAG.

    One file is one video, and one video's decode is one task: Ray would add no parallelism,
    only its start (seconds, and on a small machine CPU taken from the decode). A URL may be a
    playlist of many videos, so it always goes to Ray (with a head start)."""
    from stages.manifest import source_kind
    from vico_pipeline.runtime import cluster_address

    if not (config.ray.inline_one_file and config.ray.inline_max_videos) or cluster_address(config.ray):
        return None
    units = list(dict.fromkeys(download_unit(line["url"]) for line in manifest_rows))
    if len(units) != 1 or source_kind(manifest_rows[0]["url"]) not in ("file", "store"):
        return None
    specs = stage_specs()
    if not all(runs_in_driver(spec, config) for spec in specs):
        return None
    return {spec.name: 1 for spec in specs}


def run_inline(manifest_rows: list[dict], config, stage_roots: dict[str, str], log=None,
               progress: bool = False) -> list[dict]:
    """The DAG of pipeline.build_dataset, one video after the other in this process.
    `progress`: the stage lines of a Ray run (vico_pipeline/progress.py), for work that takes
    a while (a decode); a light regeneration ends before a line would be drawn."""
    import contextlib
    import sys

    from vico_pipeline import progress as stage_progress

    specs = stage_specs()
    first = DownloadRunner(specs[0], config, stage_roots["download"])
    runners = [StageRunner(spec, config, stage_roots[spec.name]) for spec in specs[1:]]
    rows = []
    first_lines = {download_unit(line["url"]): line for line in reversed(manifest_rows)}  # as run_stages
    units = list(dict.fromkeys(download_unit(line["url"]) for line in manifest_rows))
    tally = stage_progress.start_tally([spec.name for spec in specs], len(units), use_ray=False)
    display = stage_progress.Display(tally, log or (lambda msg: print(msg, file=sys.stderr)),
                                     config.ray.status_every_s) if progress else contextlib.nullcontext()
    with display:
        for unit in units:
            line = first_lines[unit]
            for row in first(line):
                for runner in runners:
                    row = runner(row)
                rows.append(row)
    return sorted(merge_duplicates(rows), key=lambda r: (r["source"], r["video_id"]))


def describe(pending: dict[str, int]) -> str:
    if any(name in HEAVY_STAGES for name in pending):  # one_file_work
        return ("ray: not started; one file and no stage with a model actor or GPU: the run is one video's "
                "work and runs in this process (ray.inline_one_file: false uses Ray)")
    work = ", ".join(f"{name} for {n} video{'s' if n != 1 else ''}" for name, n in pending.items()) or "none"
    return f"ray: not started; every heavy stage is cached, light work left ({work}) runs in this process"


__all__ = ["light_work", "one_file_work", "run_inline", "describe"]
