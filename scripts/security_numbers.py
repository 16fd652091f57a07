"""Numbers for issue 18's closing note (the tests assert; this only measures), on loopback:

- a chat request whose reused keep-alive connection drips its headers, against deadline_s=2;
- an ASR answer dripping its body, against asr.deadline_s=3;
- the subtitles stage on a 58 MB SRT of a million cues (subtitles.max_bytes: 5 MB).

Run from the repo root:  PYTHONPATH=$PWD python scripts/security_numbers.py
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from stages.asr import AsrStage
from stages.subtitles import SubtitlesStage
from tests import test_security_deadlines as drips
from tests.media import testsrc
from vico_pipeline.config import Config
from vico_pipeline.engines import Request, build_engine


def dripped_headers_on_a_reused_connection() -> str:
    server = drips._serve(drips._SecondDrips)
    config = Config.model_validate({"caption": {"engine": "openai", "model": "m", "retries": 0, "timeout_s": 30,
                                                "deadline_s": 2,
                                                "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1"}})
    engine = build_engine(config.caption, "caption")
    try:
        engine.generate([Request(prompt="one")])  # answered at once; the connection stays open
        started = time.monotonic()
        [result] = engine.generate([Request(prompt="two")])
        return f"reused connection, dripped headers, deadline_s=2: {result.error_type} after " \
               f"{time.monotonic() - started:.2f} s"
    finally:
        engine.close()
        server.shutdown()


def dripped_asr_body(video: str) -> str:
    server = drips._serve(drips._BodyDrips)
    config = Config.model_validate({"asr": {"enabled": True, "model": "w", "timeout_s": 30, "deadline_s": 3,
                                            "retries": 2, "chunk_s": 10.0,
                                            "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1"}})
    stage = AsrStage(config)
    stage.setup()
    item = {"video_id": "v", "source": video, "video": {"video_id": "v", "media_path": video, "has_audio": True}}
    try:
        started = time.monotonic()
        rows = list(stage.safe_process(item, "v", video))
        return f"ASR dripped body, asr.deadline_s=3: {rows[0].error_type} after " \
               f"{time.monotonic() - started:.2f} s (audio extraction included)"
    finally:
        server.shutdown()


def a_million_cues(video: str, folder: str) -> str:
    shutil.copy(video, os.path.join(folder, "clip.mp4"))
    cue = "{n}\n00:00:01,000 --> 00:00:02,000\nspam spam spam spam\n\n"
    with open(os.path.join(folder, "clip.srt"), "w") as handle:
        handle.write("".join(cue.format(n=i + 1) for i in range(1_000_000)))
    size = os.path.getsize(os.path.join(folder, "clip.srt"))
    stage = SubtitlesStage(Config())
    stage.setup()
    video_row = {"video_id": "v", "media_path": os.path.join(folder, "clip.mp4"), "duration_s": 4.0,
                 "has_subtitles": False}
    started = time.monotonic()
    rows = list(stage.safe_process({"video_id": "v", "source": "x", "video": video_row}, "v", "x"))
    kinds = [getattr(r, "error_type", "cue") for r in rows]
    return f"{size / 1e6:.1f} MB SRT, 1,000,000 cues: {kinds} in {time.monotonic() - started:.3f} s"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        speech = testsrc(os.path.join(tmp, "speech.mp4"), 4, audio=True)
        print(dripped_headers_on_a_reused_connection())
        print(dripped_asr_body(speech))
        print(a_million_cues(speech, tmp))
