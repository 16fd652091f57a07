"""No deadlock with default resources (issue 10, point 0).

An endpoint engine's actor holds a small CPU share by default, so on 2 CPUs an
`openai` run for captions and clues finishes; actor pools that would take every
CPU stop the run before the DAG starts, with one line and exit status 2.
The run goes through the real CLI, a 2-CPU local Ray, and a scripted
OpenAI-compatible server on 127.0.0.1 (as tests/test_engines_openai.py).
"""
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_vico
from tests.procs import send_json
from vico_pipeline.config import load_config
from vico_pipeline.engines.registry import engine_resources
from vico_pipeline.resources import planned_pools, shortfall

THINGS = ["lamp", "kettle", "bicycle", "guitar", "umbrella", "teapot", "ladder", "violin", "basket", "mirror"]
PLACES = ["shelf", "bench", "carpet", "windowsill", "table", "staircase", "balcony", "counter", "doorstep", "piano"]


def test_endpoint_engines_hold_a_quarter_cpu_model_engines_one():
    config = load_config(None, ["caption.engine=openai", "caption.model=m", "caption.base_url=http://127.0.0.1:1/v1",
                                "clues.engine=transformers", "clues.model=m"])
    assert engine_resources(config.caption)["num_cpus"] == 0.25
    assert engine_resources(config.clues)["num_cpus"] == 1.0
    config = load_config(None, ["caption.engine=openai", "caption.model=m", "caption.num_cpus=2"])
    assert engine_resources(config.caption)["num_cpus"] == 2  # an explicit share wins


def test_the_check_counts_the_pools_plus_one_light_slot():
    openai = ["caption.engine=openai", "caption.model=m", "clues.engine=openai", "clues.model=m"]
    config = load_config(None, openai)
    assert [(p.stage, p.actors, p.cpus) for p in planned_pools(config)] == [("caption", 1, 0.25), ("summaries", 1, 0.25),
                                                                        ("clues", 1, 0.25)]
    assert shortfall(config, {"CPU": 2.0}) is None  # 0.25 + 0.25 + 0.25 + 1 light slot
    assert shortfall(config, {"CPU": 1.0}) is not None  # 1.5 needed
    heavy = load_config(None, openai + ["caption.num_cpus=1", "clues.num_cpus=1"])
    line = shortfall(heavy, {"CPU": 2.0})
    assert line and "\n" not in line
    assert "need 3 CPUs (caption 1 x 1, summaries 1 x 1, clues 1 x 1) plus 1 for the light stages" in line
    assert "caption.num_cpus / clues.num_cpus" in line and "ray.num_cpus" in line
    gpus = load_config(None, ["caption.engine=vllm", "caption.model=m", "caption.tensor_parallel_size=2"])
    assert "need 2 GPUs (caption 1 x 2)" in shortfall(gpus, {"CPU": 64.0, "GPU": 1.0})
    assert shortfall(load_config(None, []), {"CPU": 1.0}) is None  # offline engines: tasks only


# --------------------------------------------------------------------------- a real run on 2 CPUs
class _Server:
    """Answers caption requests (they carry frames) and clue requests (text) like a careful model;
    the clip from 00:56 always gets a refusal, which the caption gates must count."""

    def __init__(self):
        self.requests = {"caption": 0, "clues": 0}
        self.lock = threading.Lock()

    def answer(self, messages: list[dict]) -> str:
        content = messages[-1]["content"]
        if isinstance(content, list):  # frames + prompt: a caption request
            with self.lock:
                self.requests["caption"] += 1
            prompt = next(p["text"] for p in content if p["type"] == "text")
            minutes, seconds = re.search(r"\((\d+):(\d+) to", prompt).groups()
            index = (int(minutes) * 60 + int(seconds)) // 14
            if index >= 4:
                return "I'm sorry, but I can't describe this clip."
            thing, place = THINGS[index % len(THINGS)], PLACES[index % len(PLACES)]
            return json.dumps({"caption": f"A {thing} rests on the {place}. A hand reaches for the {thing}.",
                               "key_event": f"A hand reaches for the {thing} on the {place}."})
        if '"summary"' in content:  # a segment or video summary (stages/summaries.py)
            return json.dumps({"summary": "Someone reaches for things that rest on tables and shelves."})
        with self.lock:
            self.requests["clues"] += 1
        events = []
        for clip_id, text in re.findall(r"^\[([^\]]+)\] \S+-\S+: (.*)$", content, re.M):
            thing, place = re.match(r"A (\w+) rests on the (\w+)", text).groups()
            events.append({"clip_id": clip_id, "clue": f"Someone reaches for the {thing} on the {place}"})
        return json.dumps({"events": events})

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = server.answer(body["messages"])
                send_json(self, 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": content}}],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})
        return Handler


@pytest.fixture(scope="module")
def endpoint():
    script = _Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), script.handler())
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def demo_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    done = run_vico("demo-videos", str(folder), "--count", "1", "--minutes", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    return str(folder / "manifest.txt")


def _args(manifest: str, out: str, base_url: str, *extra: str) -> list[str]:
    sets = [f"sources.manifest={manifest}", f"output.root={out}", "ray.num_cpus=2", "ray.inline_max_videos=0",
            "caption.engine=openai", "caption.model=scripted", f"caption.base_url={base_url}",
            "clues.engine=openai", "clues.model=scripted", f"clues.base_url={base_url}", *extra]
    return ["run", "configs/demo.yaml"] + [a for s in sets for a in ("--set", s)]


def test_an_openai_run_on_two_cpus_at_default_resources_finishes(endpoint, demo_videos, tmp_path):
    base_url, script = endpoint
    done = run_vico(*_args(demo_videos, str(tmp_path / "out"), base_url), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    version = done.stdout.strip().splitlines()[-1]
    assert script.requests["caption"] >= 5 and script.requests["clues"] >= 1  # requests were sent
    questions = pq.read_table(os.path.join(version, "questions")).to_pylist()
    assert questions and {(q["caption_engine"], q["clue_engine"]) for q in questions} == {("openai", "openai")}
    # The refused clip (asked twice: once, then answer_retries 1) is counted by type in the manifest...
    manifest = json.load(open(os.path.join(version, "manifest.json")))
    assert manifest["stages"]["caption"]["error_types"] == {"caption_refusal": 1}
    # ...every clue candidate is in the version, and the card names no stand-in engine for the data.
    candidates = pq.read_table(os.path.join(version, "clue_candidates")).to_pylist()
    assert len(candidates) == 4 and all(c["kept"] for c in candidates)
    card = open(os.path.join(version, "README.md")).read()
    assert "no model made" not in card and "caption_refusal 1" in card


def test_pools_that_take_every_cpu_stop_the_run_with_one_line(endpoint, demo_videos, tmp_path):
    base_url, script = endpoint
    before = dict(script.requests)
    done = run_vico(*_args(demo_videos, str(tmp_path / "out"), base_url, "caption.num_cpus=1", "clues.num_cpus=1"),
                    timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "need 3 CPUs (caption 1 x 1, summaries 1 x 1, clues 1 x 1) plus 1 for the light stages, and Ray has 2" in last
    assert "Traceback" not in done.stderr and script.requests == before  # stopped before any request
