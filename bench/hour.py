"""Hour-scale benchmark: a 60-minute 360p video through `vico run`, against a bare decode.

For each length (default 10 and 60 minutes), one synthetic 640x360 demo video
(`vico demo-videos DIR --count 1 --minutes M`) goes through:

(a) The floor: one ffmpeg decode of the file through the frames stage's own filter
    graph into the null muxer (bench/ingest.py `bare_decode`).
(b) `vico run` with the offline engines (configs/demo.yaml: describe captions, template
    clues and summaries, rules blind filter), manifest and output root overridden and
    `clues.context_tokens` set to the small context (default 2048).
(c) The same, with the clue and summary steps on a small real model behind
    `transformers serve` on 127.0.0.1: a randomly initialised 1-layer Llama whose context
    (max_position_embeddings) is that small context, with a byte-level BPE tokenizer trained
    here on the pipeline's prompts and the offline run's captions and summaries (so it packs
    this text roughly as a real model's tokenizer packs English). A loopback proxy in front
    of the server records every request, its text bytes and the server's own prompt token
    count (`text_bytes_per_server_token`: how tightly the tokenizer packed the prompts).

Recorded, per run: wall time over (a); each stage's seconds and its worker's peak resident
memory during the video (the manifest's `stages.<stage>.peak_rss_bytes`, stages/base.py
`peak_memory`: a reused Ray worker's peak still holds what its earlier tasks left allocated);
after (b), each stage again alone in a fresh process on (b)'s parts (its own peak); every
process of the run sampled with psutil every half second (the driver, the largest Ray worker,
the largest ffmpeg, the whole tree's proportional set size); and the largest prompt the clue and summary steps sent
(`max_prompt_tokens`, as the engine counted it) against the room (`prompt_tokens_room` =
context_tokens - max_tokens), plus in (c) the largest the server counted.

    python bench/hour.py                              # 10 and 60 minutes, JSON to --out
    python bench/hour.py --minutes 1 --offline-only   # a quick look

Progress lines go to stderr; results are written to --out after every step.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

from ingest import bare_decode  # noqa: E402  (the floor of bench/ingest.py, same graph)

GIB = 1024 ** 3
ROW_TABLES = ("clips", "captions", "summaries", "clues", "questions", "errors")
STARTED = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr, with the time since the bench started."""
    elapsed = int(time.monotonic() - STARTED)
    print(f"[{elapsed // 3600:d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def vico_env() -> dict:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def vico(*args: str) -> list[str]:
    return [sys.executable, "-m", "vico_pipeline.cli", *args]


# --------------------------------------------------------------------------- the video and its floor
def demo_video(work: str, minutes: float) -> str:
    """One demo video of `minutes` (640x360, 10 fps H.264), made by the CLI as a user would."""
    folder = os.path.join(work, f"videos-{minutes:g}min")
    subprocess.run(vico("demo-videos", folder, "--count", "1", "--minutes", f"{minutes:g}"), check=True,
                   cwd=REPO, env=vico_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return os.path.join(folder, "manifest.txt")


# What the hour's subtitles say: one line every SUBTITLE_EVERY clips, each inside one 14-s clip.
SUBTITLE_EVERY = 3
SUBJECTS = ("the narrator", "a guide", "the presenter", "a visitor", "the host", "an engineer")
TOPICS = ("the old bridge", "a red kite", "the harbour lights", "a glass tower", "the night market",
          "a mountain road", "the river mill", "a quiet library", "the train yard", "a winter garden")


def subtitle_lines(duration_s: float, offset: int) -> list[tuple[float, float, str]]:
    """Distinct spoken lines, each 4 s inside one clip (so `said_when` can place it)."""
    lines = []
    for n, clip in enumerate(range(offset, int(duration_s // 14), SUBTITLE_EVERY)):
        subject, topic = SUBJECTS[n % len(SUBJECTS)], TOPICS[(n // len(SUBJECTS)) % len(TOPICS)]
        lines.append((clip * 14 + 4.0, clip * 14 + 8.0, f"Here {subject} talks about {topic}, part {n + 1} of the tour."))
    return lines


def srt(lines: list[tuple[float, float, str]]) -> str:
    def stamp(t: float) -> str:
        return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{int(t % 60):02d},{round(t % 1 * 1000):03d}"
    return "".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n" for i, (a, b, text) in enumerate(lines, 1))


def add_subtitles(path: str, duration_s: float) -> None:
    """An embedded English mov_text track in the video (stream copy) and a sidecar NAME.en.srt
    next to it, with different lines: both sources the subtitles stage reads."""
    from stages.ffmpeg import ffmpeg_exe

    track = path + ".track.srt"
    with open(track, "w") as handle:
        handle.write(srt(subtitle_lines(duration_s, offset=1)))
    muxed = path + ".muxed.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", path, "-i", track, "-map", "0",
                    "-map", "1", "-c", "copy", "-c:s", "mov_text", "-metadata:s:s:0", "language=eng", muxed], check=True)
    os.replace(muxed, path)
    os.remove(track)
    with open(os.path.splitext(path)[0] + ".en.srt", "w") as handle:
        handle.write(srt(subtitle_lines(duration_s, offset=2)))


def video_path(manifest: str) -> str:
    return next(line.strip() for line in open(manifest) if line.strip() and not line.startswith("#"))


def floor_seconds(path: str) -> float:
    from vico_pipeline.config import load_config

    return bare_decode(path, load_config(os.path.join(REPO, "configs/demo.yaml")))


# --------------------------------------------------------------------------- memory of a process tree
class TreeSampler:
    """Samples the resident memory of a process and all its descendants (Ray's raylet, workers)."""

    def __init__(self, pid: int, every_s: float = 0.5):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.peaks: dict[int, tuple[int, str]] = {}  # pid -> (peak rss, process title at the peak)
        self.total_peak = 0
        self.total_now = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except self.psutil.Error:
                return
            total = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    if rss > self.peaks.get(proc.pid, (0, ""))[0]:
                        self.peaks[proc.pid] = (rss, " ".join(proc.cmdline()).strip()[:90] or proc.name())
                    # The total counts shared pages once (PSS), not once per process as RSS would.
                    total += getattr(proc.memory_full_info(), "pss", rss)
                except self.psutil.Error:
                    continue
            self.total_now = total
            self.total_peak = max(self.total_peak, total)
            self._stop.wait(self.every_s)

    def summary(self) -> dict:
        driver = self.peaks.get(self.root.pid, (0, ""))[0]
        workers = sorted(((rss, title) for pid, (rss, title) in self.peaks.items()
                          if pid != self.root.pid and title.startswith("ray::")), reverse=True)
        ffmpeg = [rss for rss, title in self.peaks.values() if "ffmpeg" in title.split(" ")[0]]
        return {"driver_peak_rss_bytes": driver, "largest_ffmpeg_peak_rss_bytes": max(ffmpeg, default=0),
                "largest_ray_worker_peak_rss_bytes": workers[0][0] if workers else 0,
                "largest_ray_worker_title": workers[0][1] if workers else "",
                "tree_peak_pss_bytes": self.total_peak,
                "processes_seen": len(self.peaks)}


# --------------------------------------------------------------------------- one `vico run`
def vico_run(manifest: str, out: str, log_path: str, sets: list[str]) -> dict:
    """`vico run configs/demo.yaml` with `sets`; wall time, the manifest's stage stats, sampled memory."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # nothing cached: every stage runs
    args = vico("run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}", "--set", f"output.root={out}",
                "--set", "ray.progress=false", *[a for s in sets for a in ("--set", s)])
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=REPO, env=vico_env(), stdout=subprocess.PIPE, stderr=log, text=True)
        loads = []  # the machine's 1-minute load average during the run (others' work included)
        with TreeSampler(proc.pid) as sampler:
            last = time.monotonic()
            while proc.poll() is None:
                time.sleep(1)
                loads.append(os.getloadavg()[0])
                if time.monotonic() - last >= 60:
                    last = time.monotonic()
                    say(f"  vico run: {time.perf_counter() - start:.0f} s, the run's processes hold "
                        f"{sampler.total_now / GIB:.2f} GiB (PSS) now, peak {sampler.total_peak / GIB:.2f} GiB")
            stdout = proc.stdout.read()
        wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):  # 3: the run finished without a question
        raise RuntimeError(f"vico run failed ({proc.returncode}); see {log_path}")
    version = stdout.strip().splitlines()[-1]
    manifest_json = json.load(open(os.path.join(version, "manifest.json")))
    keep = ("items_in", "items_out", "failed", "error_types", "seconds", "peak_rss_bytes", "max_prompt_tokens",
            "prompt_tokens_room")
    stages = {name: {k: s[k] for k in keep if k in s} for name, s in manifest_json["stages"].items()}
    return {"exit_code": proc.returncode, "wall_s": round(wall, 1), "phases_s": manifest_json["phases_s"],
            "rows": {table: manifest_json["tables"].get(table, {}).get("rows") for table in ROW_TABLES},
            "stages": stages, "processes": sampler.summary(), "version": version,
            "load_average_1min": {"min": round(min(loads, default=0), 2),
                                  "mean": round(sum(loads) / max(len(loads), 1), 2),
                                  "max": round(max(loads, default=0), 2)}}


def ratios(run: dict, decode_s: float) -> None:
    """The whole run (process and Ray start included) and its stage DAG alone, over one decode."""
    run["wall_over_decode"] = round(run["wall_s"] / decode_s, 2)
    run["dag_over_decode"] = round(run["phases_s"]["stages"] / decode_s, 2)


def stage_memory_ok(run: dict, limit: int = 2 * GIB) -> bool:
    return all(s.get("peak_rss_bytes", 0) <= limit for s in run["stages"].values())


# --------------------------------------------------------------------------- each stage in a fresh process
def stages_alone(run: dict, sets: list[str], scratch: str) -> dict:
    """Each stage of a finished run again, alone in a fresh process, on the run's own input parts:
    the process's RSS before the video (imports, config) and its peak during it (no other stage's
    leftovers in the worker, unlike in the run)."""
    import shutil

    stages_dir = os.path.join(os.path.dirname(run["version"]), "_stages")
    shutil.rmtree(scratch, ignore_errors=True)  # a part left there would be reused, not recomputed
    from vico_pipeline.registry import stage_specs

    out = {}
    dag_stages = {spec.name for spec in stage_specs()}  # not the driver's steps after the DAG (dedup, shards)
    for name in run["stages"]:
        if name not in dag_stages or name == "download" or not run["stages"][name].get("items_in"):
            continue
        args = ["--stage-alone", name, "--stages-dir", stages_dir, "--work", os.path.join(scratch, name)]
        args += [a for s in sets for a in ("--set", s)]
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], cwd=REPO, env=vico_env(),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"stage {name} alone failed: {proc.stderr[-2000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def stage_alone(name: str, stages_dir: str, sets: list[str], scratch: str) -> dict:
    """Run stage `name` through its StageRunner (the DAG's own worker code) on the parts in `stages_dir`."""
    import glob

    import psutil

    from stages.base import peak_memory
    from vico_pipeline.config import load_config
    from vico_pipeline.pipeline import StageRunner, _read_rows
    from vico_pipeline.registry import stage_specs

    config = load_config(os.path.join(REPO, "configs/demo.yaml"), sets)
    refs = {os.path.basename(os.path.dirname(os.path.dirname(part))).rsplit("-", 1)[0]: part
            for part in glob.glob(os.path.join(stages_dir, "*-*", "parts", "*.parquet"))}
    video = _read_rows(refs["download"])[0]
    spec = next(spec for spec in stage_specs() if spec.name == name)
    runner = StageRunner(spec, config, scratch)
    before = psutil.Process().memory_info().rss  # the runner resets the peak to about this, then runs
    row = runner({"video_id": video["video_id"], "source": video["source"], "refs": json.dumps(refs), "stats": "{}",
                  "error_parts": "[]"})
    after = peak_memory()["peak_rss_bytes"]
    stats = json.loads(row["stats"]).get(name, {})
    if "seconds" not in stats:  # cached or nothing to do: the peak would measure nothing
        raise RuntimeError(f"stage {name} did not run on the video: {stats}")
    return {"before_bytes": before, "peak_rss_bytes": after, "added_bytes": after - before,
            "seconds": stats["seconds"]}


# --------------------------------------------------------------------------- the small served model
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model(path: str, context: int, texts: list[str]) -> str:
    """A random 1-layer Llama with `context` positions and a byte-level BPE tokenizer trained on `texts`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from vico_pipeline.engines.tiny import CHAT_TEMPLATE

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=context,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tokenizer_texts(version: str) -> list[str]:
    """The prompt templates and the offline run's captions and summaries: what the model will read."""
    import pyarrow.parquet as pq

    from stages import clues, summaries

    texts = list(clues.PROMPTS.values()) + [clues.FINAL_PROMPT, clues.JUDGE_PROMPT, summaries.ANSWER]
    texts += [t for prompts in summaries.PROMPTS.values() for t in prompts.values()]
    for table, column in (("captions", "caption"), ("captions", "key_event"), ("summaries", "text")):
        path = os.path.join(version, table)
        if os.path.exists(path):
            texts += [t for t in pq.read_table(path, columns=[column]).column(column).to_pylist() if t]
    texts += [f"{m:02d}:{s:02d}" for m in range(61) for s in range(0, 60, 7)]
    return texts


class Recorder:
    """What passed through the proxy: each request's bytes and the server's prompt token count."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []

    def add(self, entry: dict) -> None:
        """One request: its body's bytes, its messages' text bytes, status, the server's prompt tokens."""
        with self.lock:
            self.requests.append(entry)

    def summary(self, max_tokens: int, context: int) -> dict:
        prompts = [r["prompt_tokens"] for r in self.requests if r.get("prompt_tokens")]
        text = sum(r["text_bytes"] for r in self.requests if r.get("prompt_tokens"))
        return {"text_bytes_per_server_token": round(text / sum(prompts), 2) if prompts else None,
                "requests": len(self.requests), "answered": len(prompts),
                "server_max_prompt_tokens": max(prompts, default=0),
                "server_max_prompt_plus_max_tokens": max(prompts, default=0) + max_tokens,
                "context": context, "largest_request_bytes": max((r["bytes"] for r in self.requests), default=0),
                "statuses": sorted({r["status"] for r in self.requests})}


def text_bytes(body: bytes) -> int:
    """UTF-8 bytes of the text of a chat request's messages (what the tokenizer reads, less the template)."""
    try:
        messages = json.loads(body).get("messages") or []
    except ValueError:
        return 0
    total = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        total += sum(len((p.get("text") or "").encode()) for p in parts if isinstance(p, dict))
    return total


def proxy(upstream: str, recorder: Recorder) -> ThreadingHTTPServer:
    """A loopback proxy to `upstream` (http://127.0.0.1:port) that records every chat request."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def forward(self, body: bytes | None):
            request = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": self.headers.get("Content-Type", "")})
            try:
                with urllib.request.urlopen(request, timeout=600) as answer:
                    status, payload, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                status, payload, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
            if body is not None:
                entry = {"bytes": len(body), "status": status, "text_bytes": text_bytes(body)}
                try:
                    entry["prompt_tokens"] = json.loads(payload)["usage"]["prompt_tokens"]
                except (ValueError, KeyError, TypeError):
                    pass
                recorder.add(entry)
            self.send_response(status)
            self.send_header("Content-Type", kind or "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            self.forward(None)

        def do_POST(self):
            self.forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Served:
    """`transformers serve` on 127.0.0.1 with the hub offline and an empty cache; ended by its PID."""

    def __init__(self, model: str, work: str):
        self.model, self.work = model, work

    def __enter__(self):
        hub = os.path.join(self.work, "empty-hub")
        os.makedirs(hub, exist_ok=True)
        self.port = free_port()
        cli = os.path.join(os.path.dirname(sys.executable), "transformers")
        self.log = open(os.path.join(self.work, "serve.log"), "wb")
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=hub, TRANSFORMERS_VERBOSITY="error")
        self.proc = subprocess.Popen([cli, "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                                      "--device", "cpu"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited; see {self.log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).read()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve did not answer; see {self.log.name}") from None
                time.sleep(0.5)

    def rss_bytes(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def served_run(manifest: str, work: str, offline_version: str, context: int, max_tokens: int) -> dict:
    model = small_model(os.path.join(work, f"small-llama-{context}"), context, tokenizer_texts(offline_version))
    with Served(model, work) as server:
        recorder = Recorder()
        front = proxy(f"http://127.0.0.1:{server.port}", recorder)
        try:
            sets = ["clues.engine=openai", f"clues.base_url=http://127.0.0.1:{front.server_address[1]}/v1",
                    f"clues.model={model}", f"clues.context_tokens={context}", f"clues.max_tokens={max_tokens}",
                    "clues.timeout_s=600", "clues.retries=1", "clues.deadline_s=1800"]
            run = vico_run(manifest, os.path.join(work, "out-served"), os.path.join(work, "run-served.log"), sets)
            run["server"] = recorder.summary(max_tokens, context)
            run["server"]["serve_rss_bytes_at_end"] = server.rss_bytes()
        finally:
            front.shutdown()
            front.server_close()
    return run


# --------------------------------------------------------------------------- the bench
def bench_length(minutes: float, args, results: dict) -> None:
    key = f"{minutes:g}min"
    entry = results.setdefault(key, {})
    work = os.path.join(args.work, key)
    os.makedirs(work, exist_ok=True)
    say(f"{key}: making the video (vico demo-videos, 640x360 10 fps)")
    manifest = demo_video(args.work, minutes)
    path = video_path(manifest)
    from stages.ffmpeg import probe

    meta = probe(path)
    add_subtitles(path, meta.duration_s)
    entry["video"] = {"path": path, "minutes": minutes, "duration_s": meta.duration_s, "subtitles": "embedded + sidecar",
                      "size": f"{meta.width}x{meta.height}", "fps": meta.fps, "bytes": os.path.getsize(path)}
    say(f"{key}: one bare ffmpeg decode (the frames stage's graph into the null muxer)")
    entry["bare_decode_s"] = round(floor_seconds(path), 2)
    say(f"{key}: bare decode {entry['bare_decode_s']} s; vico run, offline engines")
    save(results, args.out)
    # The library's clue count (one per 2 minutes, up to 24), not the demo's one a clip up to 8.
    sets = [f"clues.context_tokens={args.context}", f"clues.max_tokens={args.max_tokens}",
            "clues.seconds_per_clue=120", "clues.max_clues=24"]
    offline = vico_run(manifest, os.path.join(work, "out-offline"), os.path.join(work, "run-offline.log"), sets)
    ratios(offline, entry["bare_decode_s"])
    offline["stage_memory_under_2gib"] = stage_memory_ok(offline)
    entry["offline"] = offline
    say(f"{key}: each stage again, alone in a fresh process, on the offline run's parts")
    offline["stages_alone"] = stages_alone(offline, sets, os.path.join(work, "alone"))
    say(f"{key}: offline run {offline['wall_s']} s ({offline['wall_over_decode']}x the decode)")
    save(results, args.out)
    if args.offline_only:
        return
    say(f"{key}: vico run, clues and summaries on a small model (context {args.context}) behind transformers serve")
    served = served_run(manifest, work, offline["version"], args.context, args.max_tokens)
    ratios(served, entry["bare_decode_s"])
    served["stage_memory_under_2gib"] = stage_memory_ok(served)
    entry["served"] = served
    say(f"{key}: served run {served['wall_s']} s; server saw {served['server']['requests']} requests, "
        f"largest prompt {served['server']['server_max_prompt_tokens']} tokens (+{args.max_tokens} answer) "
        f"of {args.context}")
    save(results, args.out)


def memory_growth(results: dict, short: float, long: float) -> dict:
    """Each stage's worker peak (and the sampled processes') at the longest length over the shortest:
    1.0 is flat in video length."""
    growth = {}
    for run in ("offline", "served"):
        a, b = results[f"{short:g}min"].get(run), results[f"{long:g}min"].get(run)
        if not (a and b):
            continue
        growth[run] = {name: round(b["stages"][name]["peak_rss_bytes"] / s["peak_rss_bytes"], 2)
                       for name, s in a["stages"].items() if s.get("peak_rss_bytes") and name in b["stages"]
                       and b["stages"][name].get("peak_rss_bytes")}
        for key in ("driver_peak_rss_bytes", "largest_ffmpeg_peak_rss_bytes", "largest_ray_worker_peak_rss_bytes",
                    "tree_peak_pss_bytes"):
            if a["processes"].get(key):
                growth[run][key] = round(b["processes"][key] / a["processes"][key], 2)
    return growth


def save(results: dict, out: str) -> None:
    tmp = out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(results, handle, indent=2)
    os.replace(tmp, out)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60], help="video lengths (default 10 60)")
    parser.add_argument("--context", type=int, default=2048, help="the small model's context = clues.context_tokens")
    parser.add_argument("--max-tokens", type=int, default=256, help="clues.max_tokens (the answer's room)")
    parser.add_argument("--offline-only", action="store_true", help="leave out the served-model run")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "vico-bench-hour"))
    parser.add_argument("--out", default=None, help="results JSON (default WORK/results.json)")
    parser.add_argument("--stage-alone", help=argparse.SUPPRESS)  # internal: one stage in this process
    parser.add_argument("--stages-dir", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage_alone:
        print(json.dumps(stage_alone(args.stage_alone, args.stages_dir, args.set, args.work)))
        return {}
    os.makedirs(args.work, exist_ok=True)
    args.out = args.out or os.path.join(args.work, "results.json")
    results = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": load_average()},
               "context_tokens": args.context, "max_tokens": args.max_tokens}
    for minutes in args.minutes:
        bench_length(minutes, args, results)
        results["machine"][f"load_average_after_{minutes:g}min"] = load_average()
        save(results, args.out)
    if len(args.minutes) > 1:
        results["memory_growth"] = memory_growth(results, args.minutes[0], args.minutes[-1])
        save(results, args.out)
    say(f"done: {args.out}")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
