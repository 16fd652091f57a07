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
