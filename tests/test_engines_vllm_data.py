"""`caption.runner: ray_data_llm`: the vllm engine through Ray Data's LLM API (`ray.data.llm`).

vLLM cannot be installed on these machines (no GPU, not in the venv), so no request ever
reaches a vLLM engine here. What is tested is everything around the engine call: the config
to `vLLMEngineProcessorConfig`, the Processor that `build_processor` builds from it (its
stages, actor pool and GPU settings; built, never run), the request columns one clip row
gives (messages with the frames as images, the versioned prompt, sampling params with
guided JSON), the answer parsing (success, failed request, malformed JSON), and the caption
step end to end on a local Ray: the processor's engine stages replaced by a plain
`map_batches` that writes the columns vLLM's stage would (a stand-in, because vLLM cannot
be installed), between the real processor's own wrapped preprocess and postprocess.
"""
import base64
import json
import logging
import os
import sys

import pytest

from stages.base import ErrorRow
from stages.caption import CAPTION_SCHEMA_JSON, CAPTIONS_SCHEMA, caption_prompt, caption_request
from stages.clip_filter import FILTERED_SCHEMA
from stages.download import VIDEOS_SCHEMA
from stages.frames import CLIPS_SCHEMA
from vico_pipeline import layout, storage
from vico_pipeline.config import CaptionConfig, ConfigError, load_config
from vico_pipeline.engines import EngineError
from vico_pipeline.engines.tiny import jpeg
from vico_pipeline.engines.vllm_data import (RESULT_COLUMNS, answer, postprocess, preprocess, processor_config,
                                             to_result)
from vico_pipeline.pipeline import ANSWER_CARRY as CARRY
from vico_pipeline.pipeline import REFERENCE_COLUMNS, caption_processor, caption_with_processor, write_part
from vico_pipeline.registry import stage_specs

RED, BLUE, GREEN = (200, 40, 40), (40, 70, 200), (40, 180, 60)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from vico_pipeline.runtime import configure_data_context

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1")
    # Ray's workers cannot import this test module: its functions (the stand-in stage) go by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    configure_data_context(progress=False)
    yield
    ray.shutdown()


def _section(model: str, **kw) -> CaptionConfig:
    base = dict(engine="vllm", runner="ray_data_llm", model=model, frames_per_clip=4, max_tokens=300)
    return CaptionConfig(**{**base, **kw})


def _clip(vid: str, index: int, colour=RED, frames: int = 4) -> dict:
    return {"clip_id": f"{vid}-{index:05d}", "video_id": vid, "clip_index": index, "start_s": 14.0 * index,
            "end_s": 14.0 * (index + 1), "caption_frames": [jpeg(colour, box=(2 + 8 * i, 4, 10 + 8 * i, 12))
                                                            for i in range(frames)],
            "brightness": 80.0, "motion": 2.0, "dup_similarity": 0.1}


# --------------------------------------------------------------------------- config
def test_runner_is_validated_in_one_line():
    with pytest.raises(ConfigError, match="ray_data_llm runs the vllm engine only, not 'describe'"):
        load_config(None, ["caption.runner=ray_data_llm"])
    with pytest.raises(ConfigError, match="clues run in the stage's actors only"):
        load_config(None, ["clues.engine=vllm", "clues.runner=ray_data_llm"])
    config = load_config(None, ["caption.engine=vllm", "caption.model=m", "caption.runner=ray_data_llm"])
    assert config.caption.runner == "ray_data_llm" and load_config(None).caption.runner == "actor"


def test_runner_does_not_change_the_caption_fingerprint():
    from vico_pipeline.fingerprint import stage_fingerprints, version_fingerprint

    actor = load_config(None, ["caption.engine=vllm", "caption.model=m"])
    data = load_config(None, ["caption.engine=vllm", "caption.model=m", "caption.runner=ray_data_llm",
                              "caption.accelerator_type=H100"])
    assert stage_fingerprints(actor, stage_specs()) == stage_fingerprints(data, stage_specs())
    manifest = [{"url": "https://example.org/v.mp4"}]
    assert version_fingerprint(actor, manifest, stage_specs()) == version_fingerprint(data, manifest, stage_specs())


def test_processor_config_from_the_caption_section(tmp_path):
    section = _section(str(tmp_path), tensor_parallel_size=2, replicas=3, max_replicas=5, batch_size=16,
                       max_model_len=8192, gpu_memory_utilization=0.8, accelerator_type="H100",
                       engine_args={"enforce_eager": True})
    cfg = processor_config(section, 4)
    assert cfg.model_source == str(tmp_path)
    assert cfg.engine_kwargs == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8, "trust_remote_code": False,
                                 "max_model_len": 8192, "limit_mm_per_prompt": {"image": 4}, "enforce_eager": True,
                                 "task_type": "generate"}  # task_type: added by Ray
    assert cfg.concurrency == (3, 5) and cfg.batch_size == 16 and cfg.accelerator_type == "H100"
    assert cfg.should_continue_on_error is True and cfg.prepare_multimodal_stage == {"enabled": True}
    fixed = processor_config(_section(str(tmp_path), replicas=2), 4)
    assert fixed.concurrency == (2, 2)  # a fixed pool, as `replicas` means for the actor runner
    assert fixed.accelerator_type is None and "max_model_len" not in fixed.engine_kwargs
    with pytest.raises(EngineError, match="num_gpus 1 differs"):
        processor_config(_section(str(tmp_path), tensor_parallel_size=2, num_gpus=1), 4)
    with pytest.raises(EngineError, match="needs a model"):
        processor_config(_section(None), 4)


def test_build_processor_builds_a_processor_without_vllm(local_ray, tmp_path):
    """The model directory is empty: Ray only reads the model's config for telemetry at build
    time (and logs that it failed); vLLM, the tokenizer and the weights load when it runs."""
    from ray.data.llm import Processor

    config = load_config(None, ["caption.engine=vllm", f"caption.model={tmp_path}", "caption.runner=ray_data_llm",
                                "caption.tensor_parallel_size=2", "caption.replicas=3", "caption.batch_size=16"])
    processor = caption_processor(config)
    assert isinstance(processor, Processor)
    assert processor.list_stage_names() == ["PrepareMultimodalStage", "ChatTemplateStage", "TokenizeStage",
                                            "vLLMEngineStage", "DetokenizeStage"]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    kwargs = engine.map_batches_kwargs
    assert (kwargs["compute"].min_size, kwargs["compute"].max_size) == (3, 3)
    # Two GPUs a replica: Ray's own executor, a placement group of two GPU bundles per replica.
    assert kwargs["num_gpus"] == 0 and kwargs["ray_remote_args_fn"].args[0] == 2
    assert engine.fn_constructor_kwargs["engine_kwargs"]["distributed_executor_backend"] == "ray"
    assert engine.fn_constructor_kwargs["should_continue_on_error"] is True
    one = caption_processor(load_config(None, ["caption.engine=vllm", f"caption.model={tmp_path}",
                                               "caption.runner=ray_data_llm"]))
    assert one.get_stage_by_name("vLLMEngineStage").map_batches_kwargs["num_gpus"] == 1  # one GPU a replica


# --------------------------------------------------------------------------- requests and answers
def test_preprocess_builds_the_chat_request_of_one_clip(tmp_path):
    section = _section(str(tmp_path), temperature=0.2)
    clip = _clip("vid", 3)
    row = {**clip, "refs": "{}"}
    out = preprocess(row, section, lambda r: caption_request("v1", r), drop=("caption_frames",))
    assert out["caption_frames"] is None  # not carried through the processor twice
    (message,) = out["messages"]
    assert message["role"] == "user"
    parts = message["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 4 + ["text"]
    for part, frame in zip(parts, clip["caption_frames"]):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(url.split(",", 1)[1]) == frame
    assert parts[-1]["text"] == caption_prompt("v1", clip) and "00:42 to 00:56" in parts[-1]["text"]
    params = out["sampling_params"]
    assert params["max_tokens"] == 300 and params["temperature"] == 0.2
    assert json.loads(params["structured_outputs"]["json"]) == CAPTION_SCHEMA_JSON
    plain = preprocess(row, _section(str(tmp_path), structured_output=False), lambda r: caption_request("v1", r))
    assert "structured_outputs" not in plain["sampling_params"] and "caption_frames" not in plain


def _carried(clip_index=0) -> dict:
    return {"video_id": "vid", "source": "https://example.org/v", "refs": "{}", "stats": "{}", "error_parts": "[]",
            "clip_id": f"vid-{clip_index:05d}", "clip_index": clip_index, "start_s": 0.0, "end_s": 14.0}


def test_postprocess_reads_text_tokens_latency_and_errors():
    ok = postprocess({**_carried(), "generated_text": ' {"caption": "A red car.", "key_event": "x"} ',
                      "num_input_tokens": 1200, "num_generated_tokens": 17, "time_taken_llm": 0.75,
                      "messages": ["dropped"], "__inference_error__": ""}, CARRY)
    assert set(ok) == set(CARRY) | set(RESULT_COLUMNS)
    result = to_result(ok)
    assert result.ok and result.text.startswith('{"caption"')
    assert (result.prompt_tokens, result.completion_tokens, result.latency_s) == (1200, 17, 0.75)
    assert result.finish_reason == "stop"
    cut = postprocess({**_carried(), "generated_text": '{"caption": "A red', "num_input_tokens": 5,
                       "num_generated_tokens": 300, "time_taken_llm": 0.1}, CARRY, max_tokens=300)
    assert to_result(cut).finish_reason == "length"  # all of max_tokens used: cut at the limit

    # A failed request as Ray 2.60 hands it back: past postprocess, the whole row, error set.
    failed = {**_carried(1), "messages": ["m"], "sampling_params": {}, "generated_text": "", "num_input_tokens": 0,
              "time_taken_llm": -1, "__inference_error__": "ValueError: The decoder prompt is longer than max"}
    out = answer(failed, CARRY)
    assert list(out) == [*CARRY, *RESULT_COLUMNS] and out["clip_index"] == 1
    result = to_result(out)
    assert not result.ok and result.error_type == "ValueError" and result.error.startswith("The decoder prompt")
    assert to_result(answer({**failed, "__inference_error__": "engine gave up"}, CARRY)).error_type == "inference_error"
    assert answer(ok, CARRY) == {name: ok[name] for name in (*CARRY, *RESULT_COLUMNS)}  # answered rows kept

    # Malformed JSON is never a caption: the gates make it an error row.
    from stages.caption import caption_rows
    broken = to_result(postprocess({**_carried(), "generated_text": 'The red car turns left at the gate. {"caption": ',
                                    "num_input_tokens": 5, "num_generated_tokens": 9, "time_taken_llm": 0.1}, CARRY))
    (row,) = caption_rows(_carried(), broken, "src", "vllm", "m", "v1")
    assert isinstance(row, ErrorRow) and row.error_type == "caption_unparsed"
    (error,) = caption_rows(_carried(), to_result(postprocess({**_carried(), "generated_text": "{}"}, CARRY)),
                            "src", "vllm", "m", "v1")
    assert isinstance(error, ErrorRow) and error.error_type == "caption_unparsed"
    (error,) = caption_rows(_carried(), to_result(cut), "src", "vllm", "m", "v1")
    assert error.error_type == "caption_truncated"


# --------------------------------------------------------------------------- the caption step on Ray
def _fake_vllm_stage(batch):
    """Stand-in for the processor's engine stages (vLLM cannot be installed): the columns
    vLLMEngineStage and DetokenizeStage add, or a failed request's `__inference_error__`."""
    rows = batch["__data"].tolist() if hasattr(batch["__data"], "tolist") else list(batch["__data"])
    out = []
    for row in rows:
        assert not row["clip_id"].startswith("vid-b"), "a cached video's clip reached the engine"
        parts = row["messages"][0]["content"]
        images = [p for p in parts if p["type"] == "image_url"]
        assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/") for p in images)
        assert row["sampling_params"]["structured_outputs"]["json"]
        if row["clip_index"] == 2:
            out.append({**row, "generated_text": "", "num_input_tokens": 0, "num_generated_tokens": 0,
                        "time_taken_llm": -1, "__inference_error__": "RuntimeError: CUDA out of memory"})
            continue
        text = (f'{{"caption": "Clip {row["clip_index"]} shows a red square moving right across the frame.", '
                f'"key_event": "A red square crosses clip {row["clip_index"]}."}}')
        if row["video_id"] == "vid-e":
            text = "A green field with a white box sliding slowly to the right. {\"caption\": "  # malformed JSON
        out.append({**row, "generated_text": text, "num_input_tokens": len(images),
                    "num_generated_tokens": len(text.split()), "time_taken_llm": 0.5, "__inference_error__": ""})
    return {"__data": out}


def _write_video(roots: dict, vid: str, clips: list[dict], kept: list[bool]) -> dict:
    """The download, frames and filter parts of a video; returns its reference row."""
    errors = {name: layout.errors_uri(root, vid) for name, root in roots.items()}
    refs = {}
    for stage, rows, schema in (("download", [{"video_id": vid, "source": f"file:///{vid}.mp4"}], VIDEOS_SCHEMA),
                                ("frames", clips, CLIPS_SCHEMA),
                                ("filter", [{**c, "kept": k, "reason": "" if k else "black"}
                                            for c, k in zip(clips, kept)], FILTERED_SCHEMA)):
        part = layout.part_uri(roots[stage], vid)
        write_part(rows, schema, part, errors[stage], stage)
        refs[stage] = part
    return {"video_id": vid, "source": f"file:///{vid}.mp4", "refs": json.dumps(refs), "error_parts": "[]",
            "stats": json.dumps({"download": {"rows": 1}})}


def test_caption_step_through_a_processor_writes_per_video_parts(local_ray, tmp_path):
    import ray.data

    config = load_config(None, ["caption.engine=vllm", f"caption.model={tmp_path / 'model'}",
                                "caption.runner=ray_data_llm", "caption.frames_per_clip=4"])
    os.makedirs(tmp_path / "model")
    roots = {name: str(tmp_path / name) for name in ("download", "frames", "filter", "caption")}
    spec = next(s for s in stage_specs() if s.name == "caption")
    videos = [
        # a: clip 1 filtered out, clip 2's request fails in the engine
        _write_video(roots, "vid-a", [_clip("vid-a", i) for i in range(3)], [True, False, True]),
        # b: its caption part exists already, so none of its clips may reach the engine
        _write_video(roots, "vid-b", [_clip("vid-b", i, BLUE) for i in range(2)], [True, True]),
        # c: every clip filtered out
        _write_video(roots, "vid-c", [_clip("vid-c", i) for i in range(2)], [False, False]),
        # e: the engine answers malformed JSON
        _write_video(roots, "vid-e", [_clip("vid-e", 0, GREEN)], [True]),
    ]
    cached_part = layout.part_uri(roots["caption"], "vid-b")
    write_part([{"clip_id": "vid-b-00000", "video_id": "vid-b", "caption": "cached"}], CAPTIONS_SCHEMA,
               cached_part, layout.errors_uri(roots["caption"], "vid-b"), "caption")
    # d: failed upstream (no frames part): passes through untouched
    failed_upstream = {"video_id": "vid-d", "source": "file:///vid-d.mp4", "error_parts": "[]", "stats": "{}",
                       "refs": json.dumps({"download": layout.part_uri(roots["download"], "vid-a")})}
    built = {}

    def stand_in(cfg):
        """The real processor's wrapped pre/postprocess, the engine stages replaced."""
        built["processor"] = processor = caption_processor(cfg)
        return lambda ds: ds.map(processor.preprocess).map_batches(_fake_vllm_stage, batch_format="numpy") \
            .map(processor.postprocess)

    ds = ray.data.from_items(videos + [failed_upstream])
    rows = {r["video_id"]: r for r in caption_with_processor(ds, spec, config, roots["caption"], stand_in).take_all()}
    assert sorted(rows) == ["vid-a", "vid-b", "vid-c", "vid-d", "vid-e"] and "processor" in built
    assert all(set(r) == set(REFERENCE_COLUMNS) for r in rows.values())

    a = rows["vid-a"]
    part = layout.part_uri(roots["caption"], "vid-a")
    assert json.loads(a["refs"])["caption"] == part
    (caption,) = storage.read_parquet([part]).to_pylist()
    assert caption["clip_id"] == "vid-a-00000" and caption["caption"].startswith("Clip 0 shows a red square")
    assert caption["key_event"] == "A red square crosses clip 0." and caption["answer_format"] == "json"
    assert (caption["engine"], caption["model"]) == ("vllm", str(tmp_path / "model"))
    assert (caption["prompt_tokens"], caption["latency_s"]) == (4, 0.5)  # 4 frames went as images
    errors = layout.errors_uri(roots["caption"], "vid-a")
    assert errors in json.loads(a["error_parts"])
    (error,) = storage.read_parquet([errors]).to_pylist()
    assert (error["stage"], error["item_id"], error["error_type"]) == ("caption", "vid-a-00002", "caption_RuntimeError")
    assert error["message"] == "CUDA out of memory"
    assert json.loads(a["stats"])["caption"] == {"rows": 1, "errors": 1, "seconds": 0.5}

    b = rows["vid-b"]
    assert json.loads(b["stats"])["caption"] == {"cached": True}
    assert storage.read_parquet([cached_part]).to_pylist()[0]["caption"] == "cached"

    c = rows["vid-c"]
    assert "caption" not in json.loads(c["refs"])
    (none_kept,) = storage.read_parquet([layout.errors_uri(roots["caption"], "vid-c")]).to_pylist()
    assert none_kept["error_type"] == "no_clips_kept" and "2 black" in none_kept["message"]

    assert rows["vid-d"] == failed_upstream

    # e: malformed JSON is no caption but an error row (the gates hold for this runner too)
    assert storage.read_parquet([layout.part_uri(roots["caption"], "vid-e")]).num_rows == 0
    assert "caption" not in json.loads(rows["vid-e"]["refs"])
    (unparsed,) = storage.read_parquet([layout.errors_uri(roots["caption"], "vid-e")]).to_pylist()
    assert unparsed["error_type"] == "caption_unparsed" and "A green field" in unparsed["message"]

    # Run again: every video is settled from its part, and no processor is built.
    def no_processor(cfg):
        raise AssertionError("every caption is cached: the processor must not be built")

    again = caption_with_processor(ray.data.from_items(videos), spec, config, roots["caption"], no_processor).take_all()
    assert all(json.loads(r["stats"])["caption"] == {"cached": True} for r in again)
