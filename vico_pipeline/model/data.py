"""Training samples from a version's shards: frames, the chat text around `<video>`, answer labels."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from vico_pipeline.samples import pack_questions, packed_sample, time_header

from .config import ModelUserError

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VIDEO = "<video>"


def shard_files(version_dir: str | Path, split: str) -> list[Path]:
    folder = Path(version_dir) / "shards" / split
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise ModelUserError(f"no shards in {folder} (is {version_dir} a complete version folder?)")
    return files


class ShardRows:
    """Rows of shards/{split} by index; one Parquet row group (a few videos) is held in memory at a time."""

    def __init__(self, version_dir: str | Path, split: str):
        import pyarrow.parquet as pq

        self.files = shard_files(version_dir, split)
        self.counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        # (first row, file, row group) for every row group, to read one group rather than a whole file.
        self.groups: list[tuple[int, int, int]] = []
        first = 0
        for f, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                self.groups.append((first, f, g))
                first += meta.row_group(g).num_rows
        self._cached: tuple[int, object] | None = None

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, i: int) -> dict:
        import bisect

        import pyarrow.parquet as pq

        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right([g[0] for g in self.groups], i) - 1
        first, f, g = self.groups[k]
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, pq.ParquetFile(self.files[f]).read_row_group(g))
        return self._cached[1].slice(i - first, 1).to_pylist()[0]

    def meta(self) -> list[dict]:
        """Every row without its frames: video_id, duration_s, frame_times_s, questions (and provenance)."""
        import pyarrow.parquet as pq

        out = []
        for f in self.files:
            names = pq.ParquetFile(f).schema_arrow.names
            if "questions" not in names:
                raise ModelUserError(f"{f} has no `questions` column: shards from an older vico; "
                                     "rerun `vico run` to rebuild the version's shards")
            out.extend(pq.read_table(f, columns=[n for n in names if n != "frames"]).to_pylist())
        return out

    def texts(self) -> list[str]:
        """All conversation text, with the time headers, to train a tokenizer on."""
        out = []
        for row in self.meta():
            out.append(time_header(row.get("duration_s") or 0.0, row.get("frame_times_s") or []))
            for question in row["questions"] or []:
                out.extend(turn["value"] for turn in question["conversations"] or [])
        return out


# --- samples: one question each (or packs) ------------------------------------------------------

@dataclass(frozen=True)
class SampleRef:
    row: int  # index into ShardRows
    questions: tuple[int, ...]  # the row's questions it asks, in turn order


class QuestionSamples:
    """The training samples of a split: one question a sample, or packs of questions
    no turn of which is answerable from an earlier one (`pack`, train.pack_questions).

    A question whose evidence cannot be shown within `max_frames` is left out and counted
    in `dropped`. The index is a function of (shards, max_frames, pack, seed): every worker
    and every resumed run sees the same samples.
    """

    def __init__(self, version_dir: str | Path, split: str, max_frames: int, pack: bool = False, seed: int = 0):
        self.rows = ShardRows(version_dir, split)
        self.max_frames = max_frames
        self.refs: list[SampleRef] = []
        self.dropped = self.questions = 0
        for r, row in enumerate(self.rows.meta()):
            fitting = []
            for q, question in enumerate(row["questions"] or []):
                self.questions += 1
                if packed_sample(row, [question], max_frames) is None:
                    self.dropped += 1
                else:
                    fitting.append(q)
            if pack:
                rng = random.Random(f"{seed}:{row.get('video_id')}")
                packs = pack_questions([dict(row["questions"][q], _index=q) for q in fitting], rng)
                for group in packs:
                    self.refs.extend(SampleRef(r, part) for part in self._fit(row, [q["_index"] for q in group]))
            else:
                self.refs.extend(SampleRef(r, (q,)) for q in fitting)

    def _fit(self, row: dict, group: list[int]) -> list[tuple[int, ...]]:
        """A pack cut into consecutive parts whose evidence fits the frame budget together
        (a part keeps its turns' order, so it leaks no more than the whole pack)."""
        parts: list[list[int]] = []
        for q in group:
            if parts and packed_sample(row, [row["questions"][i] for i in parts[-1] + [q]], self.max_frames) is not None:
                parts[-1].append(q)
            else:
                parts.append([q])
        return [tuple(p) for p in parts]

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[dict, dict]:
        """(the shard row, its sample: frame_indices, frame_times_s, conversations with the time header)."""
        ref = self.refs[i]
        row = self.rows[ref.row]
        return row, packed_sample(row, [row["questions"][q] for q in ref.questions], self.max_frames)

    def summary(self) -> str:
        kind = "packed questions" if any(len(r.questions) > 1 for r in self.refs) else "one question each"
        line = f"training samples: {len(self.refs)} ({kind}) from {len(self.rows)} videos"
        if self.dropped:
            line += (f"; {self.dropped} of {self.questions} questions dropped: "
                     f"their evidence does not fit in train.max_frames={self.max_frames} frames")
        return line


# --- provenance: data made by stand-in engines ----------------------------------------------

STAND_IN_ENGINES = frozenset({"describe", "template", "rules"})


def stand_in_engines(version_dir: str | Path, rows: ShardRows | None = None) -> set[str]:
    """The stand-in engines (no model: describe, template, rules) that made a version's data, read
    from the shard rows' engine columns, else from the version's manifest.json config."""
    found: set[str] = set()
    for row in (rows or ShardRows(version_dir, "train")).meta():
        found.update(str(row.get(k)) for k in ("caption_engine", "clue_engine") if row.get(k))
    if not found:
        manifest = Path(version_dir) / "manifest.json"
        config = json.loads(manifest.read_text()).get("config", {}) if manifest.exists() else {}
        found.update(str(config.get(section, {}).get("engine")) for section in ("caption", "clues"))
    return found & STAND_IN_ENGINES


# --- tokenizer ------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int):
    """A small byte-level BPE with the chat special tokens, for models without a pretrained LLM."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + ["Best option:(A) (B) (C) (D)"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=EOT)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token is None:
        tok.eos_token = IM_END
    return tok


# --- chat text ------------------------------------------------------------------------------

@dataclass
class TextSample:
    pre_ids: list[int]  # before the video: the sink
    post_ids: list[int]  # after the video: questions and answers, uncompressed
    labels: list[int]  # per post token: the token on answer tokens, -100 elsewhere


def encode_conversation(tokenizer, conversations: list[dict], system_prompt: str, max_tokens: int = 1024) -> TextSample:
    """Qwen2 chat layout; the video goes where the first `<video>` is (start of the first user turn if none)."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    pre = f"{IM_START}system\n{system_prompt}{IM_END}\n{IM_START}user\n"
    post_ids: list[int] = []
    labels: list[int] = []
    placed = False
    for k, turn in enumerate(conversations):
        value = turn["value"]
        if turn["from"] == "human":
            if not placed:
                before, _, after = value.partition(VIDEO) if VIDEO in value else ("", "", value)
                pre += before
                text = after
                placed = True
            else:
                text = f"{IM_START}user\n" + value.replace(VIDEO + "\n", "").replace(VIDEO, "")
            seg = ids(text + f"{IM_END}\n{IM_START}assistant\n")
            post_ids += seg
            labels += [-100] * len(seg)
        else:
            answer = ids(value + IM_END)
            post_ids += answer
            labels += answer  # labels only on answer tokens (and the end-of-turn token)
            nl = ids("\n")
            post_ids += nl
            labels += [-100] * len(nl)
    return TextSample(ids(pre), post_ids[:max_tokens], labels[:max_tokens])


def question_prompt(question: str, options: list[str]) -> str:
    letters = "ABCDEFGH"
    lines = [question] + [f"({letters[i]}) {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter."


def draw_ratios(window_lengths: list[int], ratios: list[int], rng: random.Random) -> list[int]:
    """One ratio per window, among those that divide the window's length (any, if none does)."""
    out = []
    for n in window_lengths:
        fitting = [r for r in ratios if n % r == 0] or list(ratios)
        out.append(rng.choice(fitting))
    return out
