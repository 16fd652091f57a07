"""Engines: describe and template (no model), the retry helper, transformers on a tiny
random LLaVA, vllm's request building and response parsing (vLLM itself cannot be
installed here: a stand-in module records what the engine hands to vLLM)."""
import json
import sys
import types

import pytest

from vico_pipeline.config import CaptionConfig, CluesConfig
from vico_pipeline.engines import EngineError, Request, build_engine, engine_resources
from vico_pipeline.engines.describe import describe, measure
from vico_pipeline.engines.retry import RetriesExhausted, backoff_delay, call_with_retries
from vico_pipeline.engines.template import pick_distinct, similarity, spread
from vico_pipeline.engines.tiny import build_tiny_vlm, jpeg

RED, BLUE, BLACK = (200, 40, 40), (40, 70, 200), (5, 5, 5)


# --------------------------------------------------------------------------- describe
def test_describe_states_measured_colours_motion_and_says_what_it_is():
    frames = [jpeg(BLUE, box=(4 + 10 * i, 8, 14 + 10 * i, 18)) for i in range(4)]
    out = describe(frames)
    assert out["caption"].startswith("describe engine: measured")
    assert "not a VLM" in out["caption"]
    assert "blue" in out["caption"] and "white" in out["caption"]
    assert "white region moves left to right" in out["key_event"]
    assert "shot change" in out["caption"] and "no shot change" in out["caption"]


def test_describe_finds_a_cut_and_darkness():
    frames = [jpeg(RED)] * 2 + [jpeg(BLACK)] * 2
    m = measure(frames)
    assert m["cuts"] == [2] and m["shots"] == ["red", "black"]
    assert describe([jpeg(BLACK)] * 3)["key_event"].startswith("black frames")
    assert "dark" in describe([jpeg(BLACK)] * 3)["key_event"]
    assert describe(frames)["key_event"].startswith("a cut from red frames to black frames")


def test_describe_engine_reports_bad_frames_per_request():
    engine = build_engine(CaptionConfig(engine="describe"), "caption")
    good, bad = engine([Request("p", images=[jpeg(RED)] * 2), Request("p", images=[b"not a jpeg"])])
    assert good.ok and json.loads(good.text)["caption"].startswith("describe engine")
    assert not bad.ok and bad.error_type == "bad_frames"


def test_offline_engines_have_one_role_each():
    with pytest.raises(EngineError):
        build_engine(CluesConfig.model_construct(engine="describe"), "clues")
    with pytest.raises(EngineError):
        build_engine(CaptionConfig.model_construct(engine="template"), "caption")


# --------------------------------------------------------------------------- template
def test_similarity_is_order_aware_and_ignores_articles():
    assert similarity("The man opens the door.", "A man opens a door") == 1.0
    a = "teal frames where a purple region moves"
    b = "purple frames where a teal region moves"
    assert similarity(a, b) < 0.85  # same words, other roles: distinct events
    assert similarity("a dog runs", "a cat sleeps") == 0.0


def test_template_picks_distinct_events_spread_over_the_video():
    # A scene that spans two clips (red, blue) gives no clue: two clips would answer it.
    texts = ["red frames", "red frames", "blue frames", "blue frames", "green frames", "a cut to black",
             "white frames", "a grey circle"]
    assert pick_distinct(texts, 0.85) == [4, 5, 6, 7]
    assert spread([0, 2, 4, 5, 7, 9], 3) == [0, 4, 9]
    engine = build_engine(CluesConfig(engine="template", max_clues=3), "clues")
    data = [{"clip_id": f"c{i}", "key_event": t} for i, t in enumerate(texts)]
    data[6]["caption"] = "a cut to black"  # clip 5's event fits clip 6's caption as well: not grounded
    events = json.loads(engine([Request("ignored", data=data)])[0].text)["events"]
    assert [e["clip_id"] for e in events] == ["c4", "c6", "c7"]
    assert events[0]["clue"] == "Green frames"


# --------------------------------------------------------------------------- retry helper
def test_retries_back_off_exponentially_then_give_up():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow")
        return "done"

    assert call_with_retries(flaky, 3, 1.0, lambda e: isinstance(e, TimeoutError), sleep=waits.append) == "done"
    assert len(calls) == 3 and len(waits) == 2
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0
    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(lambda: (_ for _ in ()).throw(TimeoutError("x")), 2, 0.1,
                          lambda e: True, sleep=waits.append)
    assert info.value.attempts == 3
    with pytest.raises(ValueError):  # not retryable: raised at once
        call_with_retries(lambda: (_ for _ in ()).throw(ValueError("bad")), 5, 0.1,
                          lambda e: isinstance(e, TimeoutError), sleep=waits.append)
    assert backoff_delay(10, 1.0, cap_s=30.0) <= 30.0


# --------------------------------------------------------------------------- resources
def test_model_engines_run_in_actors_offline_ones_in_tasks():
    assert engine_resources(CaptionConfig(engine="describe"))["actor"] is False
    assert engine_resources(CluesConfig(engine="template"))["actor"] is False
    res = engine_resources(CaptionConfig(engine="transformers", model="m", replicas=2, num_gpus=1))
    assert res == {"num_cpus": 1.0, "num_gpus": 1, "concurrency": 2, "actor": True}
    res = engine_resources(CaptionConfig(engine="vllm", model="m", tensor_parallel_size=2, replicas=4))
    assert res["actor"] and res["num_gpus"] == 2 and res["concurrency"] == 4


def test_openai_engine_needs_its_key_variable(monkeypatch):
    monkeypatch.delenv("VICO_TEST_KEY", raising=False)
    section = CaptionConfig(engine="openai", model="m", api_key_env="VICO_TEST_KEY")
    with pytest.raises(EngineError, match="VICO_TEST_KEY"):
        build_engine(section, "caption")
    monkeypatch.setenv("VICO_TEST_KEY", "sk-secret-123")
    engine = build_engine(section, "caption")
    assert engine.client.api_key == "sk-secret-123"
    assert "sk-secret" not in repr(engine.section)  # the config holds the variable's name only


# --------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_vlm(str(tmp_path_factory.mktemp("tiny") / "llava"))


def test_transformers_engine_captions_frames_in_batches(tiny_model):
    section = CaptionConfig(engine="transformers", model=tiny_model, max_tokens=6, batch_size=2, device="cpu")
    engine = build_engine(section, "caption")
    requests = [Request("describe the clip", images=[jpeg(RED)] * 3) for _ in range(3)] + \
        [Request("describe the clip", images=[jpeg(BLUE)] * 3)]
    prepared = engine.prepare(requests)
    assert [count for count, _ in prepared] == [2, 2]  # batch_size 2
    assert prepared[0][1]["pixel_values"].shape[0] == 6  # 2 requests x 3 frames
    results = engine.generate(prepared)
    assert len(results) == 4 and all(r.ok for r in results)
    assert all(0 < r.completion_tokens <= 6 and r.prompt_tokens > 3 * 4 for r in results)
    # The random model never writes EOS: every answer used all 6 tokens and says it was cut.
    assert all(r.finish_reason == ("length" if r.completion_tokens == 6 else "stop") for r in results)
    assert results[0].text == results[1].text  # same input, greedy: same output, batched or not
    assert engine.kind == "transformers" and engine.model == tiny_model


def test_transformers_engine_answers_text_requests(tiny_model):
    engine = build_engine(CluesConfig(engine="transformers", model=tiny_model, max_tokens=5, device="cpu"), "clues")
    short, long = engine([Request("events?"), Request("a much longer prompt about the events of a video")])
    assert short.ok and long.ok and long.prompt_tokens > short.prompt_tokens


# --------------------------------------------------------------------------- vllm (stand-in)
class _FakeLLM:
    instances = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        _FakeLLM.instances.append(self)

    def chat(self, conversations, params, use_tqdm=True):
        self.calls.append((conversations, params))
        out = types.SimpleNamespace
        return [out(prompt_token_ids=[1] * (10 + i),
                    outputs=[out(text=f' {{"caption": "c{i}"}} ', token_ids=[5, 6], finish_reason=("stop", "length")[i])])
                for i, _ in enumerate(conversations)]


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = _FakeLLM
    module.SamplingParams = lambda **kw: kw
    module.sampling_params = types.SimpleNamespace(StructuredOutputsParams=lambda **kw: ("structured", kw))
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeLLM.instances.clear()
    return module


def test_vllm_engine_builds_the_llm_and_requests_and_parses_outputs(fake_vllm):
    section = CaptionConfig(engine="vllm", model="Qwen/Qwen2.5-VL-7B-Instruct", tensor_parallel_size=2,
                            max_model_len=16384, frames_per_clip=8, max_tokens=64,
                            engine_args={"enforce_eager": True})
    engine = build_engine(section, "caption")
    llm = _FakeLLM.instances[0]
    assert llm.kwargs == {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "tensor_parallel_size": 2,
                          "gpu_memory_utilization": 0.9, "trust_remote_code": False, "max_model_len": 16384,
                          "limit_mm_per_prompt": {"image": 8}, "distributed_executor_backend": "mp",
                          "enforce_eager": True}
    results = engine([Request("describe", images=[jpeg(RED)] * 2, json_schema={"type": "object"}),
                      Request("describe", images=[jpeg(BLUE)])])
    conversations, params = llm.calls[0]
    content = conversations[0][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert params[0]["structured_outputs"] == ("structured", {"json": {"type": "object"}})
    assert "structured_outputs" not in params[1] and params[1]["max_tokens"] == 64
    assert [r.text for r in results] == ['{"caption": "c0"}', '{"caption": "c1"}']
    assert [(r.prompt_tokens, r.completion_tokens) for r in results] == [(10, 2), (11, 2)]
    assert [r.finish_reason for r in results] == ["stop", "length"]  # vLLM's own finish reason, passed on


def test_vllm_engine_missing_package_names_the_extra(monkeypatch):
    from vico_pipeline.errors import MissingPackage
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingPackage, match="vico\\[vllm\\]"):
        build_engine(CaptionConfig(engine="vllm", model="m"), "caption")


def test_transformers_engine_on_a_text_only_model_for_clues(tmp_path):
    from vico_pipeline.engines.tiny import build_tiny_lm

    model = build_tiny_lm(str(tmp_path / "lm"))
    engine = build_engine(CluesConfig(engine="transformers", model=model, max_tokens=5, device="cpu"), "clues")
    assert engine.vision is False
    result = engine([Request("list the events")])[0]
    assert result.ok and 0 < result.completion_tokens <= 5
    with pytest.raises(EngineError, match="text model"):
        engine([Request("caption", images=[jpeg(RED)])])
