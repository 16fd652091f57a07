"""Subtitles: parsing with webvtt-py / srt, rolling auto-captions de-duplicated, embedded tracks
extracted with the real ffmpeg, sidecar files, and yt-dlp's uploader subtitles and automatic
captions fetched by the real yt-dlp from a loopback HTTP server."""
from __future__ import annotations

import functools
import json
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.base import ErrorRow
from stages.ffmpeg import probe
from stages.cues import (SubtitleError, cues_in, fetch_subtitles, preferred_track, subtitle_lines,
                         ytdlp_subtitle_options)
from stages.subtitles import SubtitlesStage, parse_vtt, read_cues, sidecar_files
from tests import media as test_media
from tests.media import EMBEDDED_LINES, SIDECAR_LINES, make_subtitled, srt_text
from vico_pipeline.config import Config

# How YouTube's automatic captions arrive through yt-dlp: every line is typed out with word
# timings, stays up as the upper line while the next is typed, and 10 ms cues hand over.
ROLLING_VTT = """WEBVTT
Kind: captions
Language: en

00:00:00.160 --> 00:00:02.869 align:start position:0%
 
hello<00:00:00.480><c> everyone</c><00:00:00.799><c> and</c><00:00:01.040><c> welcome</c><00:00:01.360><c> back</c>

00:00:02.869 --> 00:00:02.879 align:start position:0%
hello everyone and welcome back
 

00:00:02.879 --> 00:00:05.590 align:start position:0%
hello everyone and welcome back
to<00:00:03.120><c> the</c><00:00:03.280><c> kitchen</c><00:00:03.840><c> today</c>

00:00:05.590 --> 00:00:05.600 align:start position:0%
to the kitchen today
 

00:00:05.600 --> 00:00:08.310 align:start position:0%
to the kitchen today
we&#39;re<00:00:05.920><c> going</c><00:00:06.160><c> to</c><00:00:06.400><c> bake</c><00:00:06.720><c> bread</c>

00:00:08.310 --> 00:00:08.320 align:start position:0%
we're going to bake bread
 

00:00:08.320 --> 00:00:11.000 align:start position:0%
we're going to bake bread
[Music]
"""

ROLLING_LINES = [(0.16, 2.869, "hello everyone and welcome back"), (2.879, 5.59, "to the kitchen today"),
                 (5.6, 8.31, "we're going to bake bread"), (8.32, 11.0, "[Music]")]


def test_rolling_auto_captions_keep_each_line_once_at_the_time_it_appears():
    cues = read_cues(ROLLING_VTT, "vtt", "auto", "en")
    assert [(c["start_s"], c["end_s"], c["text"]) for c in cues] == ROLLING_LINES
    # The raw file shows those lines 10 times over 7 cues: the parser really saw the repeats.
    assert sum(len([x for x in lines if x.strip()]) for _, _, lines in parse_vtt(ROLLING_VTT)) == 10
    assert {c["source"] for c in cues} == {"auto"} and {c["language"] for c in cues} == {"en"}


def test_ordinary_subtitles_are_not_split_but_repeats_and_word_by_word_growth_merge():
    text = srt_text([(1.0, 2.0, "Two lines\nin one cue."), (2.0, 3.0, "Two lines\nin one cue."),
                     (4.0, 4.5, "So"), (4.5, 5.0, "So today"), (5.0, 6.0, "So today we bake."),
                     (9.0, 10.0, "Two lines\nin one cue.")])
    cues = read_cues(text, "srt", "sidecar", None)
    assert [(c["start_s"], c["end_s"], c["text"]) for c in cues] == [
        (1.0, 3.0, "Two lines in one cue."), (4.0, 6.0, "So today we bake."), (9.0, 10.0, "Two lines in one cue.")]
    assert cues[0]["language"] == "und"


def test_markup_is_removed():
    text = srt_text([(0.0, 1.0, "<i>Quiet</i> {\\an8}Tom &amp; Jerry <font color=\"red\">run</font>")])
    assert read_cues(text, "srt", "sidecar", "en")[0]["text"] == "Quiet Tom & Jerry run"


def test_unreadable_files_raise_a_named_error():
    with pytest.raises(SubtitleError) as err:
        read_cues("this is not a subtitle file\n\nat all", "vtt", "sidecar", "en")
    assert err.value.error_type == "bad_subtitles"
    with pytest.raises(SubtitleError) as err:
        read_cues("<tt></tt>", "ttml", "auto", "en")
    assert err.value.error_type == "subtitle_format"


def test_cues_in_a_clip_and_prompt_lines():
    cues = read_cues(ROLLING_VTT, "vtt", "auto", "en")
    assert [c["text"] for c in cues_in(cues, 5.0, 9.0)] == [
        "to the kitchen today", "we're going to bake bread", "[Music]"]  # any overlap counts
    assert cues_in(cues, 11.0, 25.0) == []
    assert subtitle_lines(cues_in(cues, 0.0, 5.0)) == "\"hello everyone and welcome back\"\n\"to the kitchen today\""
    shown = subtitle_lines(cues, max_chars=60)
    assert shown.splitlines()[-1] == "(... 2 more subtitle lines not shown)"  # named, never dropped silently
    assert len(shown.splitlines()) == 3


def test_preferred_track_never_mixes_sources_or_languages():
    def cue(source, language, start):
        return {"start_s": start, "end_s": start + 1, "text": f"{source}-{language}", "source": source,
                "language": language}
    cues = [cue("auto", "en", 0), cue("sidecar", "fr", 1), cue("embedded", "eng", 2), cue("auto", "en", 3)]
    assert {c["text"] for c in preferred_track(cues)} == {"embedded-eng"}  # by source order
    assert [c["text"] for c in preferred_track(cues, ["en"])] == ["embedded-eng"]  # 'en' takes 'eng' too
    assert [c["start_s"] for c in preferred_track(cues, ["fr"])] == [1]
    assert preferred_track([], ["en"]) == []


@pytest.fixture(scope="module")
def subtitled(tmp_path_factory):
    return make_subtitled(str(tmp_path_factory.mktemp("subtitled")))


def _video_row(path: str, video_id: str = "vid") -> dict:
    meta = probe(path)
    return {"video_id": video_id, "media_path": path, "has_audio": meta.has_audio,
            "has_subtitles": bool(meta.subtitle_streams)}


def _run(stage, path, video_id="vid"):
    stage.setup()
    item = {"video_id": video_id, "source": path, "video": _video_row(path, video_id)}
    return list(stage.safe_process(item, video_id, path))


def test_embedded_track_and_sidecar_file_of_a_local_video(subtitled):
    rows = _run(SubtitlesStage(Config()), subtitled["talk"])
    assert not [r for r in rows if isinstance(r, ErrorRow)]
    embedded = [(r["start_s"], r["end_s"], r["text"]) for r in rows if r["source"] == "embedded"]
    sidecar = [(r["start_s"], r["end_s"], r["text"]) for r in rows if r["source"] == "sidecar"]
    assert embedded == EMBEDDED_LINES
    assert sidecar == SIDECAR_LINES
    assert {r["language"] for r in rows if r["source"] == "embedded"} == {"eng"}  # the stream's tag
    assert {r["language"] for r in rows if r["source"] == "sidecar"} == {"en"}  # from talk.en.srt
    assert {r["video_id"] for r in rows} == {"vid"}


def test_sidecar_names(tmp_path):
    video = test_media.testsrc(str(tmp_path / "clip.mp4"), 1)
    for name in ("clip.srt", "clip.en-US.vtt", "clip.backup.srt", "clipping.srt", "other.srt", "clip.txt"):
        (tmp_path / name).write_text(srt_text([(0, 1, "x")]))
    assert [(os.path.basename(p), lang) for p, lang in sidecar_files(video)] == [
        ("clip.en-US.vtt", "en-US"), ("clip.srt", "und")]
    assert sidecar_files("s3://bucket/clip.mp4") == []  # sidecars are looked for next to local files only


def test_a_broken_sidecar_is_an_error_row_and_the_other_sources_still_count(subtitled, tmp_path):
    import shutil

    video = shutil.copy(subtitled["talk"], tmp_path / "talk.mp4")
    (tmp_path / "talk.vtt").write_text("WEBVTT\n\nthis cue has no timing line\n")
    (tmp_path / "talk.fr.srt").write_text("1\nnot a time --> at all\nbonjour\n")
    rows = _run(SubtitlesStage(Config()), str(video))
    errors = [r for r in rows if isinstance(r, ErrorRow)]
    assert [e.error_type for e in errors] == ["bad_subtitles"] and "talk.fr.srt" in errors[0].message
    assert [r["text"] for r in rows if not isinstance(r, ErrorRow)] == [t for _, _, t in EMBEDDED_LINES]


def test_off_means_no_cues(subtitled):
    config = Config()
    config.subtitles.enabled = False
    assert _run(SubtitlesStage(config), subtitled["talk"]) == []


def test_a_video_without_subtitles_gives_no_rows_and_no_error(subtitled):
    assert _run(SubtitlesStage(Config()), subtitled["silent"]) == []


# --------------------------------------------------------------------------- yt-dlp
UPLOADER_VTT = "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\nWelcome to the <b>show</b>.\n\n" \
               "00:00:03.000 --> 00:00:04.000\nFirst, the news.\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory, subtitled):
    """A loopback HTTP server with a page holding a video and its English <track>, and a rolling
    automatic-caption file; yields its base URL."""
    import shutil

    root = tmp_path_factory.mktemp("site")
    shutil.copy(subtitled["talk"], root / "talk.mp4")
    (root / "talk.en.vtt").write_text(UPLOADER_VTT)
    (root / "auto.en.vtt").write_text(ROLLING_VTT)
    (root / "page.html").write_text(
        "<html><head><title>Talk</title></head><body><video controls><source src=\"talk.mp4\" type=\"video/mp4\">"
        "<track kind=\"subtitles\" srclang=\"en\" label=\"English\" src=\"talk.en.vtt\"></video></body></html>")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _ytdlp(tmp):
    """The video's own download, as the download stage does it (no subtitle options)."""
    import yt_dlp

    from stages.ffmpeg import ffmpeg_exe

    return yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True, "noprogress": True, "ffmpeg_location": ffmpeg_exe(),
                             "outtmpl": os.path.join(tmp, "video.%(ext)s")})


def _stored_video(media_root, tmp, video_id):
    """Where the download stage puts the video: media_root/{video_id}.mp4."""
    import shutil

    files = [f for f in os.listdir(tmp) if f.endswith(".mp4")]
    return {"video_id": video_id, "media_path": shutil.copy(os.path.join(tmp, files[0]),
                                                           os.path.join(media_root, f"{video_id}.mp4")),
            "has_subtitles": True, "has_audio": True}


def test_no_languages_asks_yt_dlp_for_nothing():
    assert ytdlp_subtitle_options([]) == {}


def test_uploader_subtitles_through_real_yt_dlp(site, tmp_path):
    media_root, tmp = str(tmp_path / "media"), str(tmp_path / "dl")
    os.makedirs(media_root)
    os.makedirs(tmp)
    with _ytdlp(tmp) as ydl:
        info = ydl.extract_info(f"{site}/page.html", download=True)
        entries = fetch_subtitles(info, ydl.params, ["en"], media_root, "vid1")
    assert [(e["source"], e["language"], e["format"]) for e in entries] == [("uploader", "en", "vtt")]
    assert json.load(open(os.path.join(media_root, "vid1.subtitles.json"))) == entries
    config = Config()
    config.subtitles.enabled = False  # only what yt-dlp fetched
    config.download.subtitles = ["en"]
    stage = SubtitlesStage(config)
    rows = list(stage.process({"video_id": "vid1", "source": site, "video": _stored_video(media_root, tmp, "vid1")}))
    assert [(r["start_s"], r["end_s"], r["text"], r["source"]) for r in rows] == [
        (1.0, 2.5, "Welcome to the show.", "uploader"), (3.0, 4.0, "First, the news.", "uploader")]


def test_automatic_captions_through_real_yt_dlp_are_de_duplicated(site, tmp_path):
    media_root, tmp = str(tmp_path / "media"), str(tmp_path / "dl")
    os.makedirs(media_root)
    os.makedirs(tmp)
    # What an extractor of a site with automatic captions (YouTube's) hands yt-dlp.
    info = {"id": "talk", "title": "Talk", "extractor": "generic", "extractor_key": "Generic",
            "webpage_url": f"{site}/page.html",
            "formats": [{"url": f"{site}/talk.mp4", "ext": "mp4", "format_id": "mp4", "vcodec": "h264", "acodec": "aac"}],
            "subtitles": {},
            "automatic_captions": {"en": [{"url": f"{site}/auto.en.vtt", "ext": "vtt"}],
                                   "de": [{"url": f"{site}/auto.en.vtt", "ext": "vtt"}]}}
    with _ytdlp(tmp) as ydl:
        info = ydl.process_ie_result(info, download=True)
        entries = fetch_subtitles(info, ydl.params, ["en"], media_root, "vid2")
    assert [(e["source"], e["language"]) for e in entries] == [("auto", "en")]  # German was not asked for
    config = Config()
    config.download.subtitles = ["en"]
    rows = list(SubtitlesStage(config).process(
        {"video_id": "vid2", "source": site, "video": _stored_video(media_root, tmp, "vid2")}))
    auto = [(r["start_s"], r["end_s"], r["text"]) for r in rows if r["source"] == "auto"]
    assert auto == ROLLING_LINES
    # The embedded track of the downloaded file is read too, as its own source.
    assert [r["text"] for r in rows if r["source"] == "embedded"] == [t for _, _, t in EMBEDDED_LINES]


def test_a_subtitle_file_that_fails_never_costs_the_video(site, tmp_path):
    media_root, tmp = str(tmp_path / "media"), str(tmp_path / "dl")
    os.makedirs(media_root)
    os.makedirs(tmp)
    info = {"id": "talk", "title": "Talk", "extractor": "generic", "extractor_key": "Generic",
            "webpage_url": f"{site}/page.html",
            "formats": [{"url": f"{site}/talk.mp4", "ext": "mp4", "format_id": "mp4", "vcodec": "h264", "acodec": "aac"}],
            "subtitles": {"en": [{"url": f"{site}/missing.en.vtt", "ext": "vtt"}]}}
    with _ytdlp(tmp) as ydl:
        info = ydl.process_ie_result(info, download=True)
        assert fetch_subtitles(info, ydl.params, ["en"], media_root, "vid3") == []  # the 404: no entry
        assert fetch_subtitles(info, ydl.params, [], media_root, "vid3") == []  # off: nothing asked
    assert os.path.getsize(os.path.join(tmp, "video.mp4")) > 0
    assert not os.path.exists(os.path.join(media_root, "vid3.subtitles.json"))


def test_the_download_stage_fetches_them_and_the_subtitles_stage_reads_them(site, tmp_path):
    """The real download stage (egress policy, yt-dlp) on a loopback page with a <track>: its
    video row leads the subtitles stage to the uploader's cues and the file's embedded track."""
    from stages.download import DownloadStage

    config = Config()
    config.download.allowed_networks = ["127.0.0.0/8"]  # the test server is on loopback
    config.download.subtitles = ["en"]
    download = DownloadStage(config, media_root=str(tmp_path / "media"))
    url = f"{site}/page.html"
    videos = [r for r in download.safe_process({"url": url, "line": 1}, "unit", url)]
    assert len(videos) == 1 and not isinstance(videos[0], ErrorRow), videos
    stage = SubtitlesStage(config)
    stage.setup()
    item = {"video_id": videos[0]["video_id"], "source": url, "video": videos[0]}
    rows = list(stage.safe_process(item, item["video_id"], url))
    assert [(r["text"], r["source"], r["language"]) for r in rows if r["source"] == "uploader"] == [
        ("Welcome to the show.", "uploader", "en"), ("First, the news.", "uploader", "en")]
    assert [r["text"] for r in rows if r["source"] == "embedded"] == [t for _, _, t in EMBEDDED_LINES]
