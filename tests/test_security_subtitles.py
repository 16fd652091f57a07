"""Hostile subtitle files: markup that comes back after unescaping, control characters, cues at
absurd times, and files too big to parse. Stored text is plain; a bad track is an error row and the
video's other tracks go on."""
from __future__ import annotations

import html
import re
import shutil

from stages.base import ErrorRow
from stages.cues import clean_line
from stages.subtitles import SubtitlesStage, read_track
from tests.media import srt_text
from vico_pipeline.config import Config


def test_escaped_markup_never_comes_back_and_control_characters_go():
    assert clean_line("&lt;script&gt;alert(1)&lt;/script&gt; hi") == "alert(1) hi"
    assert clean_line("&amp;lt;img src=x onerror=alert(1)&amp;gt;caught") == "caught"  # escaped twice
    assert clean_line("<i>Tom &amp; Jerry</i> {\\an8}run") == "Tom & Jerry run"
    assert clean_line("ring\x07 the\x1b[31m bell\u202e evil\x00") == "ring the[31m bell evil"
    for text in ("&lt;b&gt;x", "&#60;script&#62;", "<<b>script>", "&amp;amp;lt;u&amp;amp;gt;"):
        out = clean_line(text)
        assert not re.search(r"<[^>]*>", out) and out == html.unescape(out), (text, out)  # no tag, no entity


def test_cues_outside_the_video_are_dropped_and_counted():
    text = srt_text([(1.0, 2.0, "first"), (3.0, 4.0, "second")]) + \
        "\n3\n99999999:00:00,000 --> 99999999:00:01,000\nfar away\n\n4\n00:00:16,000 --> 00:00:17,000\nlate\n"
    cues, dropped = read_track(text, "srt", "sidecar", "en", duration_s=10.0)
    assert [c["text"] for c in cues] == ["first", "second"] and dropped == 2  # 17 s > 10 s + 5 s slack
    cues, dropped = read_track(text, "srt", "sidecar", "en", duration_s=9.5)
    assert dropped == 2
    cues, dropped = read_track(text, "srt", "sidecar", "en", duration_s=None)  # no duration: only < 0 dropped
    assert dropped == 0 and len(cues) == 4


def _stage_rows(tmp_path, media, files: dict[str, str], **section):
    video = tmp_path / "clip.mp4"
    shutil.copy(media["short"], video)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = Config.model_validate({"subtitles": section})
    stage = SubtitlesStage(config)
    stage.setup()
    item = {"video_id": "v", "source": str(video),
            "video": {"video_id": "v", "media_path": str(video), "duration_s": 10.0, "has_subtitles": False}}
    return list(stage.safe_process(item, "v", str(video)))


def test_a_huge_file_and_a_million_cues_are_error_rows_and_the_video_goes_on(tmp_path, media):
    cue = "{n}\n00:00:01,000 --> 00:00:02,000\nspam spam spam spam\n\n"
    huge = "".join(cue.format(n=i + 1) for i in range(1_000_000))  # about 50 MB, a million cues
    many = "".join(cue.format(n=i + 1) for i in range(20_001))  # under 5 MB, one cue too many
    good = srt_text([(1.0, 3.0, "&lt;script&gt;steal()&lt;/script&gt;hello"), (4.0, 5.0, "bye\x07")])
    rows = _stage_rows(tmp_path, media, {"clip.srt": huge, "clip.en.srt": good, "clip.fr.srt": many})
    errors = {r.message.split(":")[0]: r.error_type for r in rows if isinstance(r, ErrorRow)}
    assert len(huge) > 50_000_000 and len(many) < 5_000_000
    assert errors == {"sidecar clip.srt": "subtitles_too_large", "sidecar clip.fr.srt": "too_many_cues"}, errors
    cues = [r for r in rows if isinstance(r, dict)]
    assert [c["text"] for c in cues] == ["steal()hello", "bye"]  # the good track went on, as plain text


def test_the_bounds_are_settings(tmp_path, media):
    text = srt_text([(1.0, 2.0, "one"), (3.0, 4.0, "two"), (5.0, 6.0, "three")])
    rows = _stage_rows(tmp_path, media, {"clip.srt": text}, max_cues=2)
    assert [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["too_many_cues"]
    rows = _stage_rows(tmp_path, media, {"clip.srt": text}, max_bytes=len(text.encode()) - 1)
    assert [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["subtitles_too_large"]
    rows = _stage_rows(tmp_path, media, {"clip.srt": text + "\n4\n00:00:30,000 --> 00:00:31,000\nlate\n"})
    assert [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["cues_out_of_range"]
    assert [r["text"] for r in rows if isinstance(r, dict)] == ["one", "two", "three"]
