"""Summaries: a video's captions in, segment summaries and one video summary out.

Three levels of text about a video (like LLaVA-Video-178K's): the clip captions,
then a summary of every `summaries.segment_clips` consecutive captioned clips
(10 x 14 s = 140 s by default), then one summary of the whole video written from
the segment summaries. The clues engine writes both levels.

Every prompt fits the context budget (stages/context.py): a segment whose captions
do not fit one prompt is summarised in parts, and the parts' summaries are then
summarised into the segment's (the same for the video summary over many segments).
Those in-between summaries are not stored. A caption that cannot fit even alone is
an error row that says so; nothing is cut.

Each summary passes the caption gates (stages/caption.py `check_answer`: truncated,
refusal, repetitive, unparsed; error types `summary_*`), asked again at most
`clues.validation_retries` times. A segment that fails is an error row naming its
time range; the video summary is then written from the segments that passed (its
row spans them).
"""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage
from stages.common import RETRY_NOTE, check_answer, segments
from stages.context import Budget, TooLong
from vico_pipeline.engines import Request, build_engine
from vico_pipeline.engines.parse import extract_json
from vico_pipeline.text import clock

SUMMARIES_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    # "segment" or "video"
    ("level", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("text", pa.string()),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("prompt_version", pa.string()),
])

SUMMARY_SCHEMA_JSON = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}

PROMPTS = {
    "v1": {
        "segment": (
            "Below are the captions of consecutive clips of one part ({start} to {end}) of a longer video, in time "
            "order, each after its time range.\n\n{lines}\n\n"
            "Summarise this part of the video in 3 to 5 sentences: what happens, in order, and who and what is "
            "seen. Use only what the captions say."
        ),
        # A segment whose captions needed more than one prompt: its parts' summaries, summarised.
        "segment_from_summaries": (
            "Below are summaries of consecutive stretches of one part ({start} to {end}) of a longer video, in time "
            "order, each after its time range.\n\n{lines}\n\n"
            "Summarise this part of the video in 3 to 5 sentences: what happens, in order, and who and what is "
            "seen. Use only what the summaries say."
        ),
        "video": (
            "Below are summaries of consecutive parts of one video ({start} to {end}), in time order, each after "
            "its time range.\n\n{lines}\n\n"
            "Summarise the whole video in 4 to 8 sentences: its topic, its main events in order, and who and what "
            "is seen. Use only what the summaries say."
        ),
    },
}
ANSWER = '\nAnswer with JSON only: {{"summary": "<the summary>"}}'


def parse_summary(text: str) -> tuple[str] | None:
    """(summary,) from an answer: JSON `summary`; None when there is none."""
    data = extract_json(text)
    if isinstance(data, dict) and isinstance(data.get("summary"), str) and data["summary"].strip():
        return (" ".join(data["summary"].split()),)
    return None


def caption_piece(caption: dict) -> dict:
    return {"start_s": caption["start_s"], "end_s": caption["end_s"], "text": caption["caption"],
            "key_event": caption.get("key_event")}


def piece_line(piece: dict) -> str:
    return f"[{clock(piece['start_s'])}-{clock(piece['end_s'])}] {piece['text']}"


def summary_request(version: str, level: str, pieces: list[dict]) -> Request:
    """A prompt over `pieces` (captions for `segment`, summaries for `video`), in time order."""
    if version not in PROMPTS:
        raise ValueError(f"unknown summaries prompt version {version!r}; known: {', '.join(PROMPTS)}")
    template = PROMPTS[version][level] + ANSWER
    prompt = template.format(start=clock(pieces[0]["start_s"]) if pieces else "", lines="\n".join(map(piece_line, pieces)),
                             end=clock(pieces[-1]["end_s"]) if pieces else "")
    return Request(prompt=prompt, json_schema=SUMMARY_SCHEMA_JSON,
                   data={"task": "summary", "level": level, "pieces": pieces})


class SummariesStage(Stage):
    name = "summaries"
    schema = SUMMARIES_SCHEMA
    heavy = True

    def setup(self) -> None:
        self.engine = build_engine(self.config.clues, "clues")
        self.budget = Budget(self.engine, self.config.clues)

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        vid, source = item["video_id"], item["source"]
        runs = segments(item["caption"], self.config.summaries.segment_clips)
        written = self.condense([[caption_piece(c) for c in run] for run in runs], "segment")
        done = []
        for run, (text, error_type, why) in zip(runs, written):
            span = f"segment {clock(run[0]['start_s'])}-{clock(run[-1]['end_s'])}"
            if text is None:
                yield ErrorRow(vid, source, error_type, f"{span}: {why}")
                continue
            done.append(self.row(vid, "segment", run[0]["start_s"], run[-1]["end_s"], text))
        yield from done
        if not done:
            return
        (text, error_type, why), = self.condense([[{k: r[k] for k in ("start_s", "end_s", "text")} for r in done]],
                                                 "video")
        if text is None:
            yield ErrorRow(vid, source, error_type, f"video summary: {why}")
            return
        yield self.row(vid, "video", done[0]["start_s"], done[-1]["end_s"], text)

    def row(self, vid: str, level: str, start_s: float, end_s: float, text: str) -> dict:
        return {"video_id": vid, "level": level, "start_s": start_s, "end_s": end_s, "text": text,
                "engine": self.engine.kind, "model": self.engine.model,
                "prompt_version": self.config.summaries.prompt_version}

    # ----------------------------------------------------------------------- writing within the budget
    def condense(self, jobs: list[list[dict]], level: str) -> list[tuple[str | None, str, str]]:
        """One summary per job (a list of pieces in time order): (text, "", "") or (None, error type, why).

        A job whose pieces do not fit one prompt is summarised in parts that fit, the parts'
        summaries take its pieces' place, and so on until one prompt holds them; the jobs of
        one round go to the engine as one batch."""
        version = self.config.summaries.prompt_version
        results: list = [None] * len(jobs)
        # job -> (its pieces, whether they are summaries rather than captions)
        pending = {i: (pieces, level == "video") for i, pieces in enumerate(jobs)}
        while pending:
            plans = {}  # job -> (final?, runs of pieces, one request a run)
            for i, (pieces, of_summaries) in pending.items():
                part = "segment_from_summaries" if of_summaries else "segment"
                whole = summary_request(version, "video" if level == "video" else part, pieces)
                if self.budget.fits(whole):
                    plans[i] = (True, [pieces], [whole])
                    continue
                try:
                    runs = self.budget.pack(pieces, lambda run: summary_request(version, part, run),
                                            lambda p: f"the text of {clock(p['start_s'])}-{clock(p['end_s'])}")
                except TooLong as exc:
                    results[i] = (None, "summary_too_long", str(exc))
                    continue
                if len(runs) == len(pieces):  # no two pieces fit together: no progress possible
                    results[i] = (None, "summary_too_long", f"no two of its {len(pieces)} texts fit one prompt of "
                                                            f"{self.budget.describe()}")
                    continue
                plans[i] = (False, runs, [summary_request(version, part, run) for run in runs])
            answers = iter(self.ask([r for _, _, requests in plans.values() for r in requests]))
            pending = {}
            for i, (final, runs, requests) in plans.items():
                written = [next(answers) for _ in requests]
                failed = next((w for w in written if w[0] is None), None)
                if final or failed:
                    results[i] = failed or written[0]
                    continue
                pending[i] = ([{"start_s": run[0]["start_s"], "end_s": run[-1]["end_s"], "text": text}
                               for run, (text, _, _) in zip(runs, written)], True)
        return results

    def ask(self, requests: list[Request]) -> list[tuple[str | None, str, str]]:
        """Each request's summary through the gates, asked again at most `clues.validation_retries` times."""
        if not requests:
            return []
        results = self.budget.send(requests)
        verdicts = [self.verdict(r) for r in results]
        for _ in range(self.config.clues.validation_retries):
            again = [i for i, (text, kind, _) in enumerate(verdicts) if text is None and kind != "summary_engine"
                     and kind != "context_exceeded"]
            if not again:
                break
            retried = self.budget.send([self.budget.retry(requests[i], RETRY_NOTE, verdicts[i][2]) for i in again])
            for i, result in zip(again, retried):
                verdicts[i] = self.verdict(result)
        return verdicts

    def verdict(self, result) -> tuple[str | None, str, str]:
        if result.error_type == "context_exceeded":
            return None, "context_exceeded", (
                f"the prompt was refused as longer than the model's context although it was counted within "
                f"{self.budget.describe()}: lower clues.context_tokens to the server's context. Said: {result.error}")
        if not result.ok:
            return None, "summary_engine", f"engine error {result.error_type}: {result.error}"
        parsed, error_type, why = check_answer(result, parse_summary, "summary")
        return (parsed[0], "", "") if parsed else (None, error_type, why)
