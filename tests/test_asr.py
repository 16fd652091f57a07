"""Speech recognition: audio extracted with the real ffmpeg (16 kHz mono WAV pieces) and sent to an
OpenAI-compatible /v1/audio/transcriptions endpoint through the real openai client.

The server here is a small conforming one (stdlib http.server on 127.0.0.1): it answers
verbose_json with one segment per tone burst it hears in the WAV it receives, so the cue times
check the whole path (extraction, pieces, offsets). `transformers serve` has the route too, with
a tiny random Whisper built here (tests/tiny_whisper.py): it answers text only, without segments,
and refuses the `timestamp_granularities[]` field (so asr.segment_timestamps is off there).
"""
from __future__ import annotations

import email.parser
import io
import json
import os
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from stages.asr import AsrStage
from stages.base import ErrorRow
from stages.ffmpeg import probe
from stages.subtitles import SubtitlesStage
from tests.media import EMBEDDED_LINES, TONE_BURSTS, make_subtitled
from tests.procs import send_json
from vico_pipeline.config import Config, ConfigError, load_config


def loud_runs(wav_bytes: bytes, window_s: float = 0.02, level: float = 0.05) -> tuple[list[tuple[float, float]], dict]:
    """(start_s, end_s) of the stretches louder than `level` (of full scale), and the WAV's format."""
    with wave.open(io.BytesIO(wav_bytes)) as audio:
        rate, channels, width = audio.getframerate(), audio.getnchannels(), audio.getsampwidth()
        samples = np.frombuffer(audio.readframes(audio.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    step = int(rate * window_s)
    windows = samples[: len(samples) // step * step].reshape(-1, step)
    loud = np.sqrt((windows ** 2).mean(axis=1)) > level
    runs, start = [], None
    for i, on in enumerate(list(loud) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((round(start * window_s, 2), round(i * window_s, 2)))
            start = None
    return runs, {"rate": rate, "channels": channels, "width": width, "seconds": len(samples) / rate}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up on a slow answer is part of the tests


class TranscriptionServer:
    """Behaviour by model name: `tones` (verbose_json, a segment per tone burst, plus a 'silence'
    segment the server marks no_speech), `text-only`, `fail-first-N` (503 for the first N requests),
    `always-500`, `slow` (answers after 3 s)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failed = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fields = server.parse(self.headers["Content-Type"], body)
                status, payload = server.answer(self.path, fields)
                if status is None:
                    return
                send_json(self, status, payload)

        self.http = _QuietServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    @staticmethod
    def parse(content_type: str, body: bytes) -> dict:
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        fields: dict = {}
        for part in message.get_payload():
            name = part.get_param("name", header="content-disposition")
            value = part.get_payload(decode=True)
            fields.setdefault(name, []).append(value if name == "file" else value.decode())
        return fields

    def answer(self, path: str, fields: dict):
        if path != "/v1/audio/transcriptions":
            return 404, {"error": {"message": "no such route"}}
        model = fields["model"][0]
        runs, fmt = loud_runs(fields["file"][0])
        self.requests.append({"model": model, "fields": {k: v for k, v in fields.items() if k != "file"}, **fmt})
        if model.startswith("fail-first-") and self.failed < int(model.rsplit("-", 1)[1]):
            self.failed += 1
            return 503, {"error": {"message": "busy"}}
        if model == "always-500":
            return 500, {"error": {"message": "the model crashed"}}
        if model == "slow":
            time.sleep(3)
        if model == "text-only":
            return 200, {"text": "tone " * len(runs)}
        segments = [{"id": 0, "start": 0.0, "end": 0.5, "text": " Thanks for watching!", "no_speech_prob": 0.95}]
        segments += [{"id": i + 1, "start": s, "end": e, "text": f" tone {i + 1}", "no_speech_prob": 0.01}
                     for i, (s, e) in enumerate(runs)]
        return 200, {"task": "transcribe", "language": "english", "duration": fmt["seconds"],
                     "text": "".join(s["text"] for s in segments), "segments": segments}

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def server():
    srv = TranscriptionServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_subtitled(str(tmp_path_factory.mktemp("asr-media")))


def _config(base_url: str, model: str = "tones", **asr) -> Config:
    config = Config()
    config.asr.enabled, config.asr.base_url, config.asr.model = True, base_url, model
    config.asr.chunk_s, config.asr.retries, config.asr.backoff_s = 10.0, 1, 0.05
    for key, value in asr.items():
        setattr(config.asr, key, value)
    return config


def _item(path: str, video_id: str = "vid", **video) -> dict:
    meta = probe(path)
    row = {"video_id": video_id, "media_path": path, "has_audio": meta.has_audio,
           "has_subtitles": bool(meta.subtitle_streams), **video}
    return {"video_id": video_id, "source": path, "video": row}


def _rows(stage, item):
    return list(stage.safe_process(item, item["video_id"], item["source"]))


def test_speech_becomes_cues_at_the_right_times_across_pieces(server, videos):
    stage = AsrStage(_config(server.base_url))
    stage.setup()
    before = len(server.requests)
    rows = _rows(stage, _item(videos["tones"]))
    sent = server.requests[before:]
    assert not [r for r in rows if isinstance(r, ErrorRow)]
    # 30 s in 10 s pieces; each a 16 kHz mono 16-bit WAV, asked for verbose_json with segment times.
    assert len(sent) == 3
    assert {(r["rate"], r["channels"], r["width"]) for r in sent} == {(16000, 1, 2)}
    assert sum(r["seconds"] for r in sent) == pytest.approx(30.0, abs=0.1)
    assert {r["fields"]["response_format"][0] for r in sent} == {"verbose_json"}
    assert {tuple(r["fields"]["timestamp_granularities[]"]) for r in sent} == {("segment",)}
    # One cue per tone burst, shifted by its piece's start; the silence 'hallucination' is left out.
    assert len(rows) == len(TONE_BURSTS)
    for row, (start, end) in zip(rows, TONE_BURSTS):
        assert row["start_s"] == pytest.approx(start, abs=0.1) and row["end_s"] == pytest.approx(end, abs=0.1)
        assert row["source"] == "asr" and row["language"] == "english" and row["text"].startswith("tone")


def test_a_server_without_segments_gives_one_cue_per_piece(server, videos):
    stage = AsrStage(_config(server.base_url, "text-only", chunk_s=20.0))
    stage.setup()
    rows = _rows(stage, _item(videos["tones"]))
    # Pieces end on an audio packet, so the first is 20 s and a few ms; the second starts where it ends.
    assert len(rows) == 2 and rows[0]["start_s"] == 0.0 and rows[1]["start_s"] == rows[0]["end_s"]
    assert rows[0]["end_s"] == pytest.approx(20.0, abs=0.1) and rows[1]["end_s"] == pytest.approx(30.0, abs=0.1)
    assert [r["text"] for r in rows] == ["tone tone", "tone"]


def test_a_video_without_audio_is_an_error_row_not_a_crash(server, videos):
    stage = AsrStage(_config(server.base_url))
    stage.setup()
    before = len(server.requests)
    rows = _rows(stage, _item(videos["silent"]))
    assert [(r.error_type, r.item_id) for r in rows] == [("no_audio", "vid")]
    # Without the download row's word, the container's own streams say the same.
    rows = _rows(stage, _item(videos["silent"], has_audio=None))
    assert [r.error_type for r in rows] == ["no_audio"]
    assert len(server.requests) == before  # nothing was sent


def test_a_failing_endpoint_is_an_error_row_and_the_next_video_goes_on(server, videos):
    server.failed = 0
    stage = AsrStage(_config(server.base_url, "fail-first-2", retries=1))
    stage.setup()
    first = _rows(stage, _item(videos["tones"], "first"))  # 503, then 503 on its one retry
    assert [(r.error_type, r.item_id) for r in first] == [("asr_http_503", "first")]
    second = _rows(stage, _item(videos["tones"], "second"))  # the server recovered
    assert len(second) == len(TONE_BURSTS) and {r["video_id"] for r in second} == {"second"}
    stage = AsrStage(_config(server.base_url, "always-500", retries=0))
    stage.setup()
    assert [r.error_type for r in _rows(stage, _item(videos["tones"]))] == ["asr_http_500"]


def test_a_slow_endpoint_ends_at_the_deadline_as_an_error_row(server, videos):
    stage = AsrStage(_config(server.base_url, "slow", timeout_s=0.5, retries=5, backoff_s=0.05, deadline_s=1.5))
    stage.setup()
    rows = _rows(stage, _item(videos["tones"]))
    assert len(rows) == 1 and isinstance(rows[0], ErrorRow)
    assert rows[0].error_type in ("asr_timeout", "timeout")
    assert "deadline" in rows[0].message or "timed out" in rows[0].message.lower()


def test_an_unset_key_variable_is_an_error_row_per_video(server, videos, monkeypatch):
    monkeypatch.delenv("VICO_TEST_ASR_KEY", raising=False)
    stage = AsrStage(_config(server.base_url, api_key_env="VICO_TEST_ASR_KEY"))
    stage.setup()
    rows = _rows(stage, _item(videos["tones"]))
    assert [r.error_type for r in rows] == ["asr_config"] and "VICO_TEST_ASR_KEY" in rows[0].message


def test_the_key_never_reaches_an_error_row(server, videos, monkeypatch):
    monkeypatch.setenv("VICO_TEST_ASR_KEY", "sk-secret-123456")
    stage = AsrStage(_config(server.base_url, "always-500", retries=0, api_key_env="VICO_TEST_ASR_KEY"))
    stage.setup()
    rows = _rows(stage, _item(videos["tones"]))
    assert rows and "sk-secret-123456" not in rows[0].message


def test_subtitles_stage_asks_for_speech_only_when_a_video_has_no_subtitles(server, videos):
    config = _config(server.base_url)
    stage = SubtitlesStage(config, transcriber=AsrStage(config))
    stage.setup()
    before = len(server.requests)
    talk = _rows(stage, _item(videos["talk"]))
    assert len(server.requests) == before  # it has an embedded track and a sidecar: no speech request
    assert {r["source"] for r in talk} == {"embedded", "sidecar"}
    assert [r["text"] for r in talk if r["source"] == "embedded"] == [t for _, _, t in EMBEDDED_LINES]
    tones = _rows(stage, _item(videos["tones"]))
    assert {r["source"] for r in tones} == {"asr"} and len(tones) == len(TONE_BURSTS)


def test_config_needs_a_model_and_a_server_when_enabled():
    assert Config().asr.enabled is False
    with pytest.raises(ConfigError, match="asr.model"):
        load_config(None, ["asr.enabled=true", "asr.base_url=http://127.0.0.1:1/v1"])
    with pytest.raises(ConfigError, match="base_url"):
        load_config(None, ["asr.enabled=true", "asr.model=whisper"])


# --------------------------------------------------------------------------- transformers serve
@pytest.fixture(scope="module")
def whisper_serve(tmp_path_factory):
    """`transformers serve` on a tiny random Whisper built here; yields its base URL, model path and log."""
    from tests.procs import transformers_serve
    from tests.tiny_whisper import build_tiny_whisper

    root = tmp_path_factory.mktemp("whisper-serve")
    model = build_tiny_whisper(str(root / "tiny-whisper"))
    for base_url in transformers_serve(root):
        yield base_url, model, root / "serve.log"


def test_transformers_serve_transcribes_a_tiny_random_whisper(whisper_serve, videos):
    base_url, model, log = whisper_serve
    # It refuses `timestamp_granularities[]` (422: unexpected field), so the switch is off.
    stage = AsrStage(_config(base_url, model, chunk_s=15.0, retries=0, timeout_s=120, segment_timestamps=False))
    stage.setup()
    rows = _rows(stage, _item(videos["tones"]))
    errors = [r for r in rows if isinstance(r, ErrorRow)]
    assert not errors, f"{errors} / {log.read_text()[-1500:]}"
    # Text only, no segments: one cue per 15 s piece, with whatever the random model wrote.
    assert len(rows) == 2 and rows[0]["start_s"] == 0.0 and rows[1]["start_s"] == rows[0]["end_s"]
    assert rows[0]["end_s"] == pytest.approx(15.0, abs=0.1) and rows[1]["end_s"] == pytest.approx(30.0, abs=0.1)
    assert all(r["source"] == "asr" and r["text"] for r in rows)


# --------------------------------------------------------------------------- a whole run
def test_a_run_fills_the_subtitles_table_and_keeps_it_when_off(server, videos, tmp_path):
    """Through `run` on real local Ray: the talk video's embedded track and sidecar, the tones video's
    speech; then subtitles and speech off: the table is there and empty, nothing else re-runs."""
    import pyarrow.dataset as pads
    import ray

    from stages.manifest import video_id_for
    from vico_pipeline.run import run

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{videos['talk']}\n{videos['tones']}\n")
    settings = [f"sources.manifest={manifest}", f"output.root={tmp_path / 'out'}", "ray.num_cpus=2",
                "asr.enabled=true", f"asr.base_url={server.base_url}", "asr.model=tones", "asr.chunk_s=10"]
    read = lambda version: pads.dataset(os.path.join(version, "subtitles")).to_table().to_pylist()  # noqa: E731
    try:
        first = run(load_config(os.path.join(repo, "configs", "demo.yaml"), settings), log=lambda msg: None)
    finally:
        ray.shutdown()
    rows = read(first)
    talk, tones = video_id_for(videos["talk"]), video_id_for(videos["tones"])
    assert {r["source"] for r in rows if r["video_id"] == talk} == {"embedded", "sidecar"}
    speech = [r for r in rows if r["video_id"] == tones]
    assert {r["source"] for r in speech} == {"asr"} and len(speech) == len(TONE_BURSTS)
    assert [r["start_s"] for r in speech] == pytest.approx([s for s, _ in TONE_BURSTS], abs=0.1)
    manifest_json = json.load(open(os.path.join(first, "manifest.json")))
    assert manifest_json["tables"]["subtitles"]["rows"] == len(rows)
    logs = []
    second = run(load_config(os.path.join(repo, "configs", "demo.yaml"),
                             settings + ["subtitles.enabled=false", "asr.enabled=false"]), log=logs.append)
    assert second != first and read(second) == []
    assert any("not started" in line for line in logs)  # only the light subtitles stage had work: no Ray
