"""vico's progress display: a line per stage with done/total, clips/s, failures and ETA; in a
pseudo-terminal redrawn in place with Ray's own bars and notices off, piped as plain lines.
The two runs here are real `vico run`s (local Ray) on a manifest whose only input fails, which
also shows the exit status 3 and the last line of a run that produced no question."""
from __future__ import annotations

import http.server
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
import pytest

from tests.conftest import LOOPBACK
from vico_pipeline.progress import Display, Tally, stage_lines

STAGES = ["download", "frames", "filter", "caption", "clues", "questions"]
RAY_NOISE = ("Token authentication", "progress UI", "Truncating long operator name", "execution finished",
             "Progress bars disabled", "Tasks:")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tally() -> Tally:
    tally = Tally()
    tally.reset(STAGES, sources=3)
    tally.report("download", found=1)
    tally.report("download", found=2, failed=0)
    tally.report("frames", rows=30)
    tally.report("frames", failed=1)
    return tally


def test_stage_lines_count_done_total_rate_failed_eta():
    lines = dict(zip(STAGES, stage_lines(_tally().snapshot(), elapsed=10.0)))
    assert re.search(r"download\s+2/3\s+sources", lines["download"]) and "ETA 0:05" in lines["download"]
    assert re.search(r"frames\s+2/3\s+videos\s+3\.0 clips/s\s+1 failed", lines["frames"])
    assert "ETA 0:05" in lines["frames"]
    assert "clips/s" not in lines["clues"] and "ETA ?" in lines["clues"]


def test_a_video_failed_upstream_leaves_the_later_totals():
    tally = _tally()
    tally.report("filter", done=0, dropped=1)
    lines = dict(zip(STAGES, stage_lines(tally.snapshot(), elapsed=10.0)))
    assert re.search(r"filter\s+0/2\s+videos", lines["filter"])


def test_piped_display_logs_the_stages_that_moved_and_every_stage_at_the_end():
    logged = []
    tally = _tally()
    display = Display(tally, logged.append, every_s=5.0, stream=open(os.devnull, "w"))
    assert not display.tty
    display.show()
    assert len(logged) == len(STAGES)  # the first time, every stage
    logged.clear()
    display.show()
    assert logged == []  # nothing moved
    tally.report("caption", rows=4)
    display.show()
    assert len(logged) == 1 and "caption" in logged[0] and "1/3" in logged[0]
    logged.clear()
    display.show(final=True)
    assert len(logged) == len(STAGES) and all(line.rstrip().endswith("done") for line in logged)


def test_a_stage_is_never_done_before_the_stages_feeding_it():
    tally = Tally()
    tally.reset(["download", "subtitles", "frames"], sources=3)
    tally.report("download", found=1)  # one of three sources sent on; its video went through subtitles
    tally.report("subtitles")
    lines = dict(zip(["download", "subtitles", "frames"], stage_lines(tally.snapshot(), elapsed=10.0)))
    assert re.search(r"subtitles\s+1/1\s+videos", lines["subtitles"]) and not lines["subtitles"].endswith("done")
    tally.report("download", found=1)
    tally.report("download", found=1)
    tally.report("subtitles", done=2)
    lines = dict(zip(["download", "subtitles", "frames"], stage_lines(tally.snapshot(), elapsed=10.0)))
    assert lines["download"].endswith("done") and lines["subtitles"].endswith("done")
    assert not lines["frames"].endswith("done")


def test_an_interrupted_display_shows_the_states_it_had_and_says_stopped():
    logged = []
    tally = _tally()
    try:
        with Display(tally, logged.append, every_s=60.0, stream=open(os.devnull, "w")):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finals = dict(zip(STAGES, logged[-len(STAGES):]))
    assert all(line.rstrip().endswith("stopped") for line in finals.values()), logged
    assert re.search(r"download\s+2/3\s+sources", finals["download"])  # the real count, not 3/3 done


class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_with_rays_bars_on_a_terminal_gets_plain_lines():
    """`-v` in a terminal: Ray redraws its own bars there, so vico logs lines and redraws nothing."""
    terminal, logged = _FakeTerminal(), []
    display = Display(_tally(), logged.append, stream=terminal, redraw=False)
    display.show()
    assert terminal.getvalue() == "" and len(logged) == len(STAGES)
    assert all(re.match(r"\[\s*0:\d\d\] \w+ ", line) for line in logged)
    redrawn = Display(_tally(), logged.append, stream=_FakeTerminal())
    redrawn.show()
    redrawn.show()
    assert f"\x1b[{len(STAGES)}F" in redrawn.stream.getvalue()  # without Ray's bars: redrawn in place


def _manifest(tmp_path) -> str:
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{tmp_path}/no-such-video.mp4\n")
    return str(manifest)


def _run_args(tmp_path, root: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vico_pipeline.cli", "run", "configs/demo.yaml",
            "--set", f"sources.manifest={_manifest(tmp_path)}", "--set", f"output.root={root}",
            "--set", "ray.inline_max_videos=0", *extra]  # one file would run without Ray: these test Ray's run


def test_piped_progress_exit_3_and_the_last_lines(tmp_path):
    root = str(tmp_path / "out")
    proc = subprocess.run(_run_args(tmp_path, root, "--set", "ray.status_every_s=1"), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr
    version = os.path.join(root, "demo", "v1")
    assert proc.stdout.strip().splitlines()[-1] == version  # scripts still find the version
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("vico: no video produced a question") and version in err[-1]
    assert "1 video: 0 with questions, 1 failed (download 1)" in err[-2]  # the summary says where it failed
    stage_of = [(re.match(r"\[\s*[\d:]+\] (\w+) ", line), line) for line in err]
    finals = {m.group(1): line for m, line in stage_of if m}  # the last line of each stage
    assert set(STAGES) <= set(finals), proc.stderr
    assert re.search(r"download\s+1/1\s+sources\s+1 failed", finals["download"])
    assert re.search(r"frames\s+0/0\s+videos\s+0\.0 clips/s", finals["frames"])
    assert not any(noise in proc.stderr for noise in RAY_NOISE), proc.stderr
    # Found complete the second time, in JSON: the same facts, and still exit 3.
    proc = subprocess.run(_run_args(tmp_path, root, "--json"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3
    summary = json.loads(proc.stdout)
    assert summary["version_dir"] == version and summary["questions"]["total"] == 0
    assert summary["videos"] == {"total": 1, "with_questions": 0, "without_questions": 0, "failed": 1,
                                 "failed_by_stage": {"download": 1}}


def test_progress_in_a_terminal(tmp_path):
    """The same run in a pseudo-terminal: the block redrawn in place, none of Ray's own output."""
    main, child = pty.openpty()
    proc = subprocess.Popen(_run_args(tmp_path, str(tmp_path / "out")), cwd=REPO, stdin=child, stdout=child,
                            stderr=child, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=600) == 3
    os.close(main)
    out = b"".join(chunks).decode(errors="replace")
    last_block = out[out.rindex("\x1b[2Kdownload"):]  # the display's lines clear themselves as they redraw
    assert re.search(r"download\s+1/1\s+sources\s+1 failed", last_block)
    assert all(f"\x1b[2K{stage}" in last_block for stage in STAGES)
    assert not any(noise in out for noise in RAY_NOISE), out
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out).splitlines() if ln.strip()]
    assert "no video produced a question" in lines[-1]


# --------------------------------------------------------------------------- in a terminal: Ctrl-C, -v
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _in_a_terminal(args: list[str], interrupt_at: bytes | None = None, limit_s: float = 600) -> tuple[int, str]:
    """Run `args` with a pseudo-terminal as its controlling terminal (so a typed Ctrl-C reaches it as
    in a shell); with `interrupt_at`, type Ctrl-C once that output has appeared. (exit status, output)"""
    import fcntl
    import select
    import termios
    import time

    main, child = pty.openpty()

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(args, cwd=REPO, stdin=child, stdout=child, stderr=child, close_fds=True,
                            preexec_fn=own_terminal)
    os.close(child)
    out, sent, deadline = b"", False, time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
            if interrupt_at and not sent and interrupt_at in out:
                os.write(main, b"\x03")  # what Ctrl-C types
                sent = True
            if not ready and proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    return proc.wait(timeout=60), out.decode(errors="replace")


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Every request: 503. A download of it retries with backoff: a run that stays mid-way."""

    def do_GET(self):
        self.send_error(503)

    def log_message(self, *args):
        pass


def test_ctrl_c_mid_run_shows_the_real_states_and_says_a_rerun_resumes(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"http://127.0.0.1:{server.server_address[1]}/video.mp4\n")
    args = [sys.executable, "-m", "vico_pipeline.cli", "run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
            "--set", f"output.root={tmp_path}/out", "--set", LOOPBACK, "--set", "download.retries=30",
            "--set", "download.backoff_s=1"]
    try:
        status, out = _in_a_terminal(args, interrupt_at=b"\x1b[2Kdownload", limit_s=180)
    finally:
        server.shutdown()
        server.server_close()
    assert status == 130, out[-3000:]
    lines = [ln for ln in ANSI.sub("", out).replace("\r", "\n").splitlines() if ln.strip()]
    said = [ln for ln in lines if ln == "starting Ray…" or ln.startswith("ray: ")]
    assert said[0] == "starting Ray…" and said[1].startswith("ray: ")  # said before Ray's start-up, not after
    assert "interrupted" in lines[-1] and "resume" in lines[-1], lines[-5:]
    last_block = out[out.rindex("\x1b[2Kdownload"):]
    stage_rows = [ANSI.sub("", row).strip() for row in last_block.split("\n") if row.startswith("\x1b[2K")]
    assert re.search(r"download\s+0/1\s+sources.*stopped$", stage_rows[0]), stage_rows
    assert not any(row.endswith("done") for row in stage_rows), stage_rows  # nothing finished: nothing done


def test_verbose_in_a_terminal_keeps_rays_output_and_the_stage_lines_apart(tmp_path):
    """`-v`: Ray's own bars and logs in the terminal, vico's stage lines as whole plain lines."""
    status, out = _in_a_terminal(_run_args(tmp_path, str(tmp_path / "out"), "-v", "--set", "ray.status_every_s=0.5"))
    assert status == 3, out[-3000:]
    assert not re.search(r"\x1b\[\d+F", out)  # vico redrew nothing
    plain = ANSI.sub("", out).replace("\r", "\n").splitlines()
    ours = [ln for ln in plain if re.search(r"\] (%s) " % "|".join(STAGES), ln)]
    assert ours and all(re.match(r"^\[\s*\d+:\d\d\] \w+\s+\d+/\d+\s+\w+", ln) for ln in ours), ours
    finals = {re.match(r"^\[\s*[\d:]+\] (\w+)", ln).group(1): ln for ln in ours}
    assert set(STAGES) <= set(finals) and all(line.rstrip().endswith("done") for line in finals.values())
    assert "no video produced a question" in [ln for ln in plain if ln.strip()][-1]


def test_ctrl_c_in_a_run_without_ray_keeps_no_half_part_and_the_rerun_resumes(tmp_path):
    """One file, no model stage: the run is in the driver (ray.inline_one_file). Ctrl-C mid-decode
    ends it with 130 and the resume line, writes no frames part, leaves no ffmpeg; the rerun
    keeps the download part and finishes."""
    import glob

    from tests.media import testsrc
    from tests.procs import pids_with_cmdline

    video = testsrc(str(tmp_path / "long.mp4"), 180, size="1280x720", rate=30)  # seconds to decode
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{video}\n")
    args = [sys.executable, "-m", "vico_pipeline.cli", "run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
            "--set", f"output.root={tmp_path}/out"]
    # Ctrl-C once the download is done: the decode is then under way.
    status, out = _in_a_terminal(args, interrupt_at=b"\x1b[2Kdownload       1/1", limit_s=300)
    assert status == 130, out[-3000:]
    lines = [ln for ln in ANSI.sub("", out).replace("\r", "\n").splitlines() if ln.strip()]
    assert lines[0].startswith("ray: not started; one file") and "starting Ray…" not in lines
    assert "interrupted" in lines[-1] and "resume" in lines[-1], lines[-5:]
    assert re.search(r"frames\s+0/1\s+videos.*stopped$", [ln for ln in lines if ln.startswith("frames")][-1])
    stages = f"{tmp_path}/out/demo/_stages"
    assert glob.glob(f"{stages}/download-*/parts/*.parquet") and not glob.glob(f"{stages}/frames-*/parts/*.parquet")
    assert not pids_with_cmdline(video)  # no ffmpeg left decoding it
    again = subprocess.run(args + ["--set", "ray.progress=false"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode in (0, 3), again.stderr[-3000:]
    manifest_json = json.load(open(os.path.join(again.stdout.strip().splitlines()[-1], "manifest.json")))
    assert manifest_json["stages"]["download"]["cached"] == 1 and manifest_json["stages"]["frames"]["cached"] == 0

