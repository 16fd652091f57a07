"""Training samples from a version's shards: frames, the chat text around `<video>`, answer labels."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

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
    """Rows of shards/{split} by index; one Parquet file is held in memory at a time."""

    def __init__(self, version_dir: str | Path, split: str):
        import pyarrow.parquet as pq

        self.files = shard_files(version_dir, split)
        self.counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        self._cached: tuple[int, object] | None = None

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, i: int) -> dict:
        import pyarrow.parquet as pq

        for f, n in enumerate(self.counts):
            if i < n:
                if self._cached is None or self._cached[0] != f:
                    self._cached = (f, pq.read_table(self.files[f]))
                return self._cached[1].slice(i, 1).to_pylist()[0]
            i -= n
        raise IndexError(i)

    def texts(self) -> list[str]:
        """All conversation text, to train a tokenizer on."""
        import pyarrow.parquet as pq

        out = []
        for f in self.files:
            for conv in pq.read_table(f, columns=["conversations"]).column("conversations").to_pylist():
                out.extend(turn["value"] for turn in conv or [])
        return out


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
