"""The clip filter: black, frozen and near-duplicate clips dropped, with the reason."""
from stages.clip_filter import ClipFilterStage, verdict
from vico_pipeline.config import Config
from vico_pipeline.engines.tiny import synthetic_clips


def _item(clips):
    return {"video_id": "v", "source": "s", "video": {}, "frames": clips}


def test_each_reason_and_kept_clips():
    clips = synthetic_clips("v", [(200, 0, 0)] * 5)
    clips[1]["brightness"] = 3.0                       # black
    clips[2]["motion"] = 0.01                          # frozen
    clips[3]["dup_similarity"] = 0.999                 # a near-duplicate of clip 2
    stage = ClipFilterStage(Config())
    stage.setup()
    rows = list(stage.process(_item(list(reversed(clips)))))
    assert [r["clip_index"] for r in rows] == [0, 1, 2, 3, 4]  # time order, whatever the input order
    assert [(r["kept"], r["reason"]) for r in rows] == [
        (True, ""), (False, "black"), (False, "frozen"), (False, "duplicate"), (True, "")]


def test_thresholds_come_from_the_config_and_the_filter_can_be_off():
    clip = synthetic_clips("v", [(0, 0, 0)])[0] | {"brightness": 20.0}
    config = Config()
    assert verdict(clip, config.filter) == ""
    config.filter.black_brightness = 25.0
    assert verdict(clip, config.filter) == "black"
    config.filter.enabled = False
    assert verdict(clip, config.filter) == ""


def test_a_slow_moving_object_on_a_still_background_is_not_frozen():
    # The demo videos measure 0.1 to 0.6 (a small shape moving): the default must keep them.
    clip = synthetic_clips("v", [(40, 160, 60)])[0] | {"motion": 0.1}
    assert verdict(clip, Config().filter) == ""


def test_the_filter_and_caption_workers_leave_the_frames_they_never_use_on_disk(tmp_path):
    """A worker's memory must not grow with the video's JPEGs it never looks at: the filter reads
    no frames at all, the captioner no training frames (registry `unread_columns`)."""
    import pyarrow as pa

    from stages.frames import CLIPS_SCHEMA
    from vico_pipeline import storage
    from vico_pipeline.pipeline import StageRunner
    from vico_pipeline.registry import stage_specs

    clips = [c | {"train_frames": c["caption_frames"], "train_frame_times_s": c["caption_frame_times_s"],
                  "clip_path": None, "clip_file_s": None} for c in synthetic_clips("v", [(120, 80, 40)] * 3)]
    frames = str(tmp_path / "frames.parquet")
    storage.write_parquet(pa.Table.from_pylist(clips, schema=CLIPS_SCHEMA), frames)
    video = str(tmp_path / "video.parquet")
    storage.write_parquet(pa.Table.from_pylist([{"video_id": "v", "source": "s"}]), video)
    filtered = str(tmp_path / "filtered.parquet")
    storage.write_parquet(pa.Table.from_pylist([{"clip_id": c["clip_id"], "kept": True} for c in clips]), filtered)
    specs = {s.name: s for s in stage_specs()}
    refs = {"download": video, "frames": frames, "filter": filtered}
    row = {"video_id": "v", "source": "s"}
    item = StageRunner(specs["filter"], Config(), str(tmp_path / "f")).item(row, refs)
    assert len(item["frames"]) == 3 and not {"train_frames", "caption_frames"} & set(item["frames"][0])
    assert item["frames"][0]["caption_frame_times_s"] and item["frames"][0]["brightness"] is not None
    item = StageRunner(specs["caption"], Config(), str(tmp_path / "c")).item(row, refs)
    assert "train_frames" not in item["frames"][0] and item["frames"][0]["caption_frames"]
