"""Test media made with the real ffmpeg: good videos, odd videos and broken files."""
from __future__ import annotations

import os
import shutil
import subprocess

from stages.ffmpeg import ffmpeg_exe


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def testsrc(path: str, seconds: float, size: str = "320x180", rate: int = 10, extra_in: tuple = (),
            codec: tuple = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "20"),
            audio: bool = False) -> str:
    inputs = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r={rate}:d={seconds}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=d={seconds}"]
    ffmpeg(*extra_in, *inputs, *codec, *(["-c:a", "aac", "-shortest"] if audio else []), path)
    return path


def make_media(directory: str) -> dict[str, str]:
    """Every kind of input the ingest tests feed the pipeline, by name."""
    os.makedirs(directory, exist_ok=True)
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    media = {}
    media["good"] = testsrc(p("good.mp4"), 40, audio=True)
    media["short"] = testsrc(p("short.mp4"), 5)
    media["webm"] = testsrc(p("vp9.webm"), 30, codec=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k"))
    media["mkv"] = testsrc(p("h264.mkv"), 30, codec=("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "matroska"))
    # Variable frame rate: keep every frame for 10 s, then one in three.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=30", "-vf", "select='lt(t,10)+not(mod(n,3))'",
           "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", p("vfr.mp4"))
    media["vfr"] = p("vfr.mp4")
    # A phone video: portrait pixels stored landscape, with a display rotation.
    testsrc(p("landscape.mp4"), 20, size="320x176")
    try:
        ffmpeg("-display_rotation", "90", "-i", p("landscape.mp4"), "-c", "copy", p("rotated.mp4"))
    except subprocess.CalledProcessError:  # ffmpeg before 7 spells it as metadata
        ffmpeg("-i", p("landscape.mp4"), "-c", "copy", "-metadata:s:v", "rotate=90", p("rotated.mp4"))
    media["rotated"] = p("rotated.mp4")
    # Broken inputs.
    with open(p("corrupt.mp4"), "wb") as handle:
        handle.write(os.urandom(50_000))
    media["corrupt"] = p("corrupt.mp4")
    open(p("empty.mp4"), "wb").close()
    media["empty"] = p("empty.mp4")
    with open(media["good"], "rb") as handle:
        data = handle.read()
    with open(p("truncated.mp4"), "wb") as handle:  # moov atom at the end: cut off
        handle.write(data[: len(data) // 2])
    media["truncated"] = p("truncated.mp4")
    ffmpeg("-f", "lavfi", "-i", "sine=d=20", "-c:a", "aac", p("audio.m4a"))
    shutil.copy(p("audio.m4a"), p("audio-only.mp4"))
    media["audio_only"] = p("audio-only.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x180:r=1:d=1", "-frames:v", "1", p("image.png"))
    shutil.copy(p("image.png"), p("image.mp4"))
    media["image"] = p("image.mp4")
    with open(p("page.mp4"), "w") as handle:
        handle.write("<html><body>Sign in to continue</body></html>")
    media["html_as_mp4"] = p("page.mp4")
    return media


def make_hls(source: str, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    ffmpeg("-i", source, "-c", "copy", "-f", "hls", "-hls_time", "4", "-hls_playlist_type", "vod",
           os.path.join(directory, "index.m3u8"))
    return os.path.join(directory, "index.m3u8")


# Spoken lines of the subtitled test video (start_s, end_s, text): its embedded track says these.
EMBEDDED_LINES = [(1.0, 3.5, "The kettle starts to whistle."), (5.0, 8.0, "She pours the tea into two cups."),
                  (16.0, 19.5, "A cat jumps onto the table.")]
# Its sidecar file (NAME.en.srt) says these, so the two sources can be told apart.
SIDECAR_LINES = [(2.0, 4.0, "Sidecar line one."), (15.0, 17.0, "Sidecar line two.")]
# Tone bursts (start_s, end_s) in the audio of the ASR test video: "speech" a test server can time.
TONE_BURSTS = [(3.0, 5.0), (14.0, 15.5), (27.0, 29.0)]


def srt_text(lines: list[tuple[float, float, str]]) -> str:
    def stamp(t: float) -> str:
        return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{int(t % 60):02d},{round(t % 1 * 1000):03d}"
    return "".join(f"{i}\n{stamp(s)} --> {stamp(e)}\n{text}\n\n" for i, (s, e, text) in enumerate(lines, 1))


def make_subtitled(directory: str) -> dict[str, str]:
    """Videos for the subtitle and speech tests: `talk` (20 s, audio, an embedded English mov_text track
    and a sidecar talk.en.srt), `silent` (no audio stream), `tones` (30 s, tone bursts at TONE_BURSTS)."""
    os.makedirs(directory, exist_ok=True)
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    plain = testsrc(p("talk-plain.mp4"), 20, audio=True)
    with open(p("talk-track.srt"), "w") as handle:
        handle.write(srt_text(EMBEDDED_LINES))
    ffmpeg("-i", plain, "-i", p("talk-track.srt"), "-map", "0", "-map", "1", "-c:v", "copy", "-c:a", "copy",
           "-c:s", "mov_text", "-metadata:s:s:0", "language=eng", p("talk.mp4"))
    os.remove(plain)
    os.remove(p("talk-track.srt"))
    with open(p("talk.en.srt"), "w") as handle:
        handle.write(srt_text(SIDECAR_LINES))
    testsrc(p("silent.mp4"), 6)
    loud = "+".join(f"between(t,{s},{e})" for s, e in TONE_BURSTS)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=5:d=30",
           "-f", "lavfi", "-i", f"aevalsrc='if({loud},0.5*sin(2*PI*440*t),0)':s=16000:d=30",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", p("tones.mp4"))
    return {"talk": p("talk.mp4"), "sidecar": p("talk.en.srt"), "silent": p("silent.mp4"), "tones": p("tones.mp4")}


def forge_mkv_duration(source_mkv: str, out: str, factor: float) -> str:
    """A copy of a Matroska file whose Segment Info Duration element (ID 0x4489, a float in
    TimecodeScale units) is multiplied by `factor`: the header lies, the packets do not."""
    import struct

    data = open(source_mkv, "rb").read()
    at = data.find(b"\x44\x89")
    size = data[at + 2] ^ 0x80  # a one-byte EBML size: 4 or 8 (float or double)
    fmt = ">d" if size == 8 else ">f"
    value = struct.unpack(fmt, data[at + 3:at + 3 + size])[0]
    with open(out, "wb") as handle:
        handle.write(data[:at + 3] + struct.pack(fmt, value * factor) + data[at + 3 + size:])
    return out
