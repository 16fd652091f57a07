"""`vico report VERSION [--out FILE]`: one static HTML file about a version.

Everything is inside the file: charts are SVG drawn here, frames are JPEG
thumbnails as data URIs, no script, no external font or stylesheet. So it opens
offline, can be mailed, and renders the same in any browser.

Sections: counts; histograms of video durations and clips per video; tasks,
answer letters and failure reasons; per-stage stats; sample cards (frames of a
few clips with their captions, the clue timeline, the questions with answers).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from collections import Counter

import pyarrow.dataset as pads

from vico_pipeline import layout, storage
from vico_pipeline.errors import UserError
from vico_pipeline.versions import open_version

LETTERS = "ABCDEFGH"
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
SAMPLE_VIDEOS = 3
CLIPS_PER_CARD = 8
THUMB = 168


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


# --------------------------------------------------------------------------- data
def _table(version_root: str, table: str, columns: list[str] | None = None, filter=None) -> list[dict]:
    folder = layout.table_dir(version_root, table)
    if not storage.exists(folder):
        return []
    fs, path = storage.fs_and_path(folder)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns, filter=filter).to_pylist()


def _thumb(jpeg: bytes, width: int = THUMB) -> str:
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg))
    image.draft("RGB", (width, width))
    image = image.convert("RGB")
    image.thumbnail((width, width))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


# --------------------------------------------------------------------------- charts (SVG)
def bar_chart(title: str, labels: list[str], values: list[float], xlabel: str = "", colour: str = PALETTE[0],
              width: int = 420, height: int = 220) -> str:
    """Vertical bars with their values on top; an empty chart says so instead of drawing nothing."""
    left, bottom, top = 36, 42, 36
    plot_w, plot_h = width - left - 10, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{width / 2}" y="17" text-anchor="middle" class="ct">{_e(title)}</text>']
    if not values or max(values) <= 0:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">no data</text></svg>')
        return "".join(parts)
    peak = max(values)
    step = plot_w / len(values)
    bar = max(2.0, step * 0.78)
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>')
    for tick in (0, peak / 2, peak):
        y = top + plot_h - tick / peak * plot_h
        parts.append(f'<line x1="{left - 3}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(tick)}</text>')
    every = max(1, math.ceil(len(labels) / 12))
    for i, (label, value) in enumerate(zip(labels, values)):
        x = left + i * step + (step - bar) / 2
        h = value / peak * plot_h
        y = top + plot_h - h
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}" rx="2">'
                     f'<title>{_e(label)}: {_fmt(value)}</title></rect>')
        if value and len(values) <= 16:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" class="val">{_fmt(value)}</text>')
        if i % every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" class="tick">{_e(label)}</text>')
    if xlabel:
        parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" class="tick">{_e(xlabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(title: str, items: list[tuple[str, float]], colour: str = PALETTE[3], width: int = 420) -> str:
    """Horizontal bars for long labels (failure reasons)."""
    row, top = 22, 28
    height = top + row * max(1, len(items)) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{width / 2}" y="17" text-anchor="middle" class="ct">{_e(title)}</text>']
    if not items:
        parts.append(f'<text x="{width / 2}" y="{top + 14}" text-anchor="middle" class="muted">none: every input went through</text></svg>')
        return "".join(parts)
    peak = max(v for _, v in items)
    label_w = 190
    for i, (label, value) in enumerate(items):
        y = top + i * row
        w = (width - label_w - 40) * value / peak
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" class="tick">{_e(label[:34])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{colour}" rx="2">'
                     f'<title>{_e(label)}: {_fmt(value)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" class="val">{_fmt(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(title: str, values: list[float], xlabel: str, bins: int = 10, integer: bool = False,
              colour: str = PALETTE[0]) -> str:
    if not values:
        return bar_chart(title, [], [], xlabel)
    lo, hi = min(values), max(values)
    if integer:
        lo, hi = int(lo), int(hi)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        edges = list(range(lo, hi + 1, width))
        counts = [sum(1 for v in values if e <= v < e + width) for e in edges]
        labels = [str(e) if width == 1 else f"{e}-{e + width - 1}" for e in edges]
    else:
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        step = (hi - lo) / bins
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, int((v - lo) / step))] += 1
        labels = [_fmt(lo + i * step) for i in range(bins)]
    return bar_chart(title, labels, counts, xlabel, colour)


def timeline(duration: float, clues: list[dict], clips: list[dict], width: int = 860) -> str:
    """The video as a bar, its clips as ticks, each clue as a numbered marker over its clip."""
    height, y0, pad = 74, 30, 24
    duration = max(duration or 0.0, max((c["end_s"] for c in clips), default=0.0), 1e-6)
    scale = (width - 2 * pad) / duration
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="clue timeline">',
             f'<rect x="{pad}" y="{y0}" width="{width - 2 * pad}" height="14" fill="#e8ecf2" rx="3"/>']
    for clip in clips:
        x = pad + clip["start_s"] * scale
        parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 14}" stroke="#c4cbd6"/>')
    for i, clue in enumerate(clues):
        x = pad + clue["start_s"] * scale
        w = max(3.0, (clue["end_s"] - clue["start_s"]) * scale)
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x:.1f}" y="{y0}" width="{w:.1f}" height="14" fill="{colour}" rx="2">'
                     f'<title>{_e(clue["text"])}</title></rect>')
        parts.append(f'<circle cx="{x + w / 2:.1f}" cy="{y0 - 10}" r="8" fill="{colour}"/>'
                     f'<text x="{x + w / 2:.1f}" y="{y0 - 6}" text-anchor="middle" class="num">{i + 1}</text>')
    for t in range(0, int(duration) + 1, max(1, int(duration // 6) or 1)):
        parts.append(f'<text x="{pad + t * scale:.1f}" y="{y0 + 28}" text-anchor="middle" class="tick">{_mmss(t)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 or abs(value) >= 100 else f"{value:.1f}"


def _mmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- page
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
header{background:#1d2a3a;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c4d4;font-size:13px}main{padding:18px 28px;max-width:1320px}
h2{font-size:17px;margin:26px 0 10px}.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0001;min-width:96px}
.tile b{display:block;font-size:22px}.tile span{font-size:12px;color:#5a6474}
.charts{display:flex;flex-wrap:wrap;gap:14px}.chart{background:#fff;border-radius:8px;padding:6px;box-shadow:0 1px 2px #0001}
svg .ct{font-size:13px;font-weight:600;fill:#1d2430}svg .tick{font-size:10px;fill:#5a6474}
svg .val{font-size:10px;fill:#1d2430}svg .muted{font-size:12px;fill:#8a94a4}svg .num{font-size:10px;fill:#fff;font-weight:700}
table{border-collapse:collapse;background:#fff;font-size:13px}td,th{padding:4px 10px;border-bottom:1px solid #e6e9ee;text-align:right}
td:first-child,th:first-child{text-align:left}
.card{background:#fff;border-radius:10px;padding:14px 18px;margin:14px 0;box-shadow:0 1px 3px #0002}
.card h3{margin:0 0 4px;font-size:16px}.card .meta{font-size:12px;color:#5a6474;margin-bottom:8px}
.strip{display:flex;flex-wrap:wrap;gap:8px;padding-bottom:6px}.clip{width:172px;flex:none;font-size:11px;color:#2d3644}
.clip img{width:168px;border-radius:4px;display:block;background:#ddd}.clip .t{color:#5a6474;margin:2px 0}
ol.clues{font-size:13px;margin:6px 0 8px;padding-left:22px}ol.clues .tm{color:#5a6474;font-variant-numeric:tabular-nums}
.q{border-top:1px solid #edf0f4;padding:8px 0;font-size:13px}.q .task{display:inline-block;background:#e8ecf2;border-radius:4px;padding:0 6px;font-size:11px;margin-right:6px}
.q pre{white-space:pre-wrap;font-family:inherit;margin:4px 0}.q ul{margin:2px 0;padding-left:20px}
.q li.ok{color:#1f7a3a;font-weight:600}.q .ans{color:#1f7a3a;font-weight:600}
header p.standin{background:#f6c343;color:#1d2430;font-weight:600;padding:4px 8px;border-radius:4px;margin:8px 0 0}
"""


def _tiles(manifest: dict) -> str:
    tables = manifest.get("tables", {})
    tiles = [f'<div class="tile"><b>{_e(c.get("rows"))}</b><span>{_e(t)}</span></div>' for t, c in tables.items()]
    tiles.append(f'<div class="tile"><b>{_e(manifest.get("seconds"))} s</b><span>run time</span></div>')
    return '<div class="tiles">' + "".join(tiles) + "</div>"


def _stage_table(manifest: dict) -> str:
    reused = manifest.get("reused", {})
    rows = ["<tr><th>stage</th><th>items in</th><th>out</th><th>failed</th><th>by type</th><th>cached</th>"
            "<th>seconds</th><th>reused from</th></tr>"]
    for stage, s in manifest.get("stages", {}).items():
        r = reused.get(stage)
        where = f'{r.get("version") or "interrupted run"} ({r.get("videos")}/{r.get("of")})' if r else ""
        kinds = ", ".join(f"{k} {v}" for k, v in (s.get("error_types") or {}).items())
        retried = ", ".join(f"{k} {v}" for k, v in (s.get("rejected_then_retried") or {}).items())
        if retried:  # what the gates caught although a retry fixed it (no error row is left of it)
            kinds = f"{kinds}; rejected, then fixed by a retry: {retried}".lstrip("; ")
        rows.append(f"<tr><td>{_e(stage)}</td><td>{_e(s.get('items_in'))}</td><td>{_e(s.get('items_out'))}</td>"
                    f"<td>{_e(s.get('failed'))}</td><td>{_e(kinds)}</td><td>{_e(s.get('cached'))}</td>"
                    f"<td>{_e(s.get('seconds'))}</td><td>{_e(where)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _blind_table(manifest: dict) -> str:
    """Blind accuracy per task (questions answered without the video), before and after the filter."""
    blind = manifest.get("stages", {}).get("blind", {}).get("accuracy_by_task") or {}
    engine = manifest.get("config", {}).get("blind", {}).get("engine")
    if not blind:
        return f'<p class="muted">no blind verdicts (blind.engine {_e(engine)})</p>'
    rows = ["<tr><th>task</th><th>questions</th><th>blind accuracy before</th><th>after</th><th>dropped</th>"
            "<th>unanswered</th></tr>"]
    for task, b in blind.items():
        rows.append(f"<tr><td>{_e(task)}</td><td>{_e(b.get('questions'))}</td><td>{_e(b.get('before'))}</td>"
                    f"<td>{_e(b.get('after'))}</td><td>{_e(b.get('dropped'))}</td><td>{_e(b.get('unanswered'))}</td></tr>")
    return f'<p>blind.engine {_e(engine)}: each question asked without the video, under every rotation of its options</p>' \
        "<table>" + "".join(rows) + "</table>"


def _stand_in(manifest: dict) -> str:
    """The card's stand-in warning, first under the title: data no model made must not pass for real."""
    from vico_pipeline.card import stand_in_lines

    lines = stand_in_lines(manifest.get("config", {}))
    return "".join(f'<p class="standin">{_e(line.replace("**", "").replace("`", ""))}</p>' for line in lines)


def _without_input(manifest: dict) -> str:
    """Videos that got no question of a task for want of its input (no video summary, no subtitles)."""
    counts = manifest.get("stages", {}).get("questions", {}).get("tasks_without_input") or {}
    if not any(counts.values()):
        return ""
    return '<p class="muted">not made for want of input: ' + \
        ", ".join(f"{_e(task)} {_e(n)} videos" for task, n in counts.items()) + "</p>"


def _question_html(q: dict) -> str:
    options = q.get("options") or []
    answer_index = q.get("answer_index")
    body = f'<span class="task">{_e(q.get("task"))}</span><pre>{_e(q.get("question"))}</pre>'
    if options:
        body += "<ul>" + "".join(
            f'<li class="{"ok" if i == answer_index else ""}">({LETTERS[i]}) {_e(o)}{" ✓" if i == answer_index else ""}</li>'
            for i, o in enumerate(options)) + "</ul>"
    else:
        body += f'<div>answer: <span class="ans">{_e(q.get("answer"))}</span></div>'
    if q.get("answer_source") in ("model", "stand-in"):  # not a fact from timestamps: say who wrote it
        body += (f'<div class="muted">answer written by {_e(q.get("answer_engine"))} {_e(q.get("answer_model"))}'
                 f' ({_e(q["answer_source"])})</div>')
    return f'<div class="q">{body}</div>'


def _card(version_root: str, video: dict) -> str:
    vid = video["video_id"]
    where = pads.field("video_id") == vid
    clips = sorted(_table(version_root, "clips", ["clip_id", "video_id", "clip_index", "start_s", "end_s",
                                                   "train_frames", "caption_frames"], where),
                   key=lambda c: c["start_s"])
    captions = {c["clip_id"]: c for c in _table(version_root, "captions", None, where)}
    clues = sorted(_table(version_root, "clues", None, where), key=lambda c: (c["start_s"], c.get("clue_index") or 0))
    questions = sorted(_table(version_root, "questions", None, where), key=lambda q: q["question_id"])
    # A spread of clips: the clue clips first, then evenly over the video.
    clue_clips = [c["clip_id"] for c in clues]
    chosen = [c for c in clips if c["clip_id"] in clue_clips][:CLIPS_PER_CARD]
    if len(chosen) < CLIPS_PER_CARD and clips:
        step = max(1, len(clips) // CLIPS_PER_CARD)
        chosen += [c for c in clips[::step] if c not in chosen][:CLIPS_PER_CARD - len(chosen)]
    chosen.sort(key=lambda c: c["start_s"])
    strip = []
    for clip in chosen:
        frames = clip.get("train_frames") or clip.get("caption_frames") or []
        image = f'<img src="{_thumb(frames[len(frames) // 2])}" alt="{_e(clip["clip_id"])}">' if frames else ""
        caption = captions.get(clip["clip_id"], {}).get("caption") or ""
        strip.append(f'<div class="clip">{image}<div class="t">{_mmss(clip["start_s"])}–{_mmss(clip["end_s"])}'
                     f'</div>{_e(caption[:220])}{"…" if len(caption) > 220 else ""}</div>')
    clue_list = "".join(f'<li><span class="tm">{_mmss(c["start_s"])}–{_mmss(c["end_s"])}</span> {_e(c["text"])}</li>'
                        for c in clues)
    return (f'<div class="card"><h3>{_e(video.get("title") or vid)}</h3>'
            f'<div class="meta">{_e(vid)} · {_mmss(video.get("duration_s") or 0)} · {len(clips)} clips · '
            f'{len(clues)} clues · {len(questions)} questions · {_e(video.get("status"))}</div>'
            f'<div class="strip">{"".join(strip)}</div>'
            f'{timeline(video.get("duration_s") or 0.0, clues, clips)}'
            f'<ol class="clues">{clue_list}</ol>'
            f'{"".join(_question_html(q) for q in questions[:12])}</div>')


def render(version_root: str) -> str:
    manifest = open_version(version_root)
    videos = _table(version_root, "videos", ["video_id", "title", "duration_s", "status", "source"])
    clips = _table(version_root, "clips", ["video_id", "clip_id"])
    questions = _table(version_root, "questions", ["video_id", "task", "answer_index", "split"])
    errors = _table(version_root, "errors")

    durations = [v["duration_s"] / 60 for v in videos if v.get("duration_s")]
    per_video = Counter(c["video_id"] for c in clips)
    clip_counts = [per_video.get(v["video_id"], 0) for v in videos if v.get("duration_s")]
    tasks = Counter(q["task"] for q in questions)
    letters = Counter(LETTERS[q["answer_index"]] if q.get("answer_index") is not None and q["answer_index"] >= 0
                      else "open" for q in questions)
    letter_labels = [l for l in LETTERS[:4]] + sorted(k for k in letters if k not in LETTERS[:4])
    reasons = Counter(f'{e["stage"]}: {e["error_type"]}' for e in errors)
    charts = [
        histogram("Video durations", durations, "minutes"),
        histogram("Clips per video", clip_counts, "clips", integer=True, colour=PALETTE[1]),
        bar_chart("Questions by task", list(tasks), list(tasks.values()), colour=PALETTE[2]),
        bar_chart("Answer letters", letter_labels, [letters.get(l, 0) for l in letter_labels], colour=PALETTE[4]),
        hbar_chart("Failure reasons (stage: error type)", reasons.most_common(12)),
    ]
    with_questions = {q["video_id"] for q in questions}
    samples = [v for v in videos if v["video_id"] in with_questions][:SAMPLE_VIDEOS] or \
        [v for v in videos if per_video.get(v["video_id"])][:SAMPLE_VIDEOS]
    cards = "".join(_card(version_root, v) for v in samples) or '<p class="muted">no video with clips</p>'
    splits = Counter(q.get("split") for q in questions)
    title = f"{manifest.get('dataset')} {manifest.get('version')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
{_identity_tag(manifest)}<title>{_e(title)} · vico report</title><link rel="icon" href="data:,"><style>{CSS}</style></head>
<body><header><h1>{_e(title)}</h1>{_stand_in(manifest)}
<p>fingerprint {_e(manifest.get('fingerprint'))} · code {_e(manifest.get('code_version'))} ·
created {_e(manifest.get('created'))} · captions {_e(manifest.get('config', {}).get('caption', {}).get('engine'))} ·
clues {_e(manifest.get('config', {}).get('clues', {}).get('engine'))} ·
questions by split: {_e(', '.join(f'{k} {v}' for k, v in sorted(splits.items(), key=str)) or 'none')}</p></header>
<main>
<h2>Counts</h2>{_tiles(manifest)}
<h2>Distributions</h2><div class="charts">{''.join(f'<div class="chart">{c}</div>' for c in charts)}</div>
<h2>Stages</h2>{_stage_table(manifest)}
<h2>Blind answers</h2>{_blind_table(manifest)}{_without_input(manifest)}
<h2>Sample videos</h2>{cards}
</main></body></html>
"""


def default_report_path(manifest: dict) -> str:
    """DATASET-VERSION-FINGERPRINT-report.html in the working directory: never inside the version
    (versions are immutable, and may sit on a read-only store) and never beside the versions (a
    listing of them). The fingerprint's prefix tells apart two `demo/v1` of different output roots."""
    fingerprint = (manifest.get("fingerprint") or "")[:8]
    return os.path.abspath(f"{manifest.get('dataset')}-{manifest.get('version')}-{fingerprint}-report.html")


def report_identity(manifest: dict) -> str:
    """What names the version a report is about, written into the page (a meta tag) and read back
    before a report file is replaced."""
    return " ".join(str(manifest.get(k) or "-") for k in ("dataset", "version", "fingerprint", "created"))


def _identity_tag(manifest: dict) -> str:
    return f'<meta name="vico-report" content="{_e(report_identity(manifest))}">'


def existing_identity(path: str) -> str | None:
    """The version a report file at `path` is about; None when it is no vico report."""
    head = storage.read_bytes(path)[:4096].decode(errors="replace")
    found = re.search(r'<meta name="vico-report" content="([^"]*)">', head)
    return html.unescape(found.group(1)) if found else None


def check_out(out: str, manifest: dict, force: bool) -> None:
    """Refuse (one line) a file that cannot be written, or one that holds something else than this
    version's report, unless `force`."""
    folder = os.path.dirname(out) if storage.is_local(out) else out.rsplit("/", 1)[0]
    reason = storage.unwritable(folder or ".")
    if reason:
        raise UserError(f"report file is not writable: {out} ({reason})")
    if force or not storage.exists(out):
        return
    if storage.is_local(out) and os.path.isdir(storage.local_path(out)):
        raise UserError(f"{out} is a folder; --out takes the report's file name")
    found = existing_identity(out)
    if found == report_identity(manifest):
        return  # this version's own report, written again
    what = f"the report of another version ({found})" if found else "a file that is not a vico report"
    raise UserError(f"{out} holds {what}; --force overwrites it, or --out names another file")


def write_report(version_root: str, out: str | None = None, force: bool = False) -> str:
    """Write the report to `out` (default: `default_report_path`); returns where it went."""
    version_root = version_root.rstrip("/")
    manifest = open_version(version_root)
    out = out or default_report_path(manifest)
    check_out(out, manifest, force)
    text = render(version_root)
    storage.write_bytes(out, text.encode())
    return out
