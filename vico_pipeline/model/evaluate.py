"""`vico eval`: VICO val accuracy per task, and the needle grid for VST, INTP and uniform subsampling."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from .checkpoint import load_for_eval
from .config import EvalConfig, ModelUserError
from .data import IM_END, IM_START, ShardRows, question_prompt
from .intp import context_scale, ntk_rope_base, rearrange
from .needle import make_needles, place
from .vision import frames_to_pixels, uniform_indices

LETTERS = "ABCDEFGH"


class Evaluator:
    """A loaded checkpoint plus the prompt layout; every method builds its memory afresh per question."""

    def __init__(self, model, tokenizer, mcfg, device, answer_format="({letter})", answer_prefix="("):
        self.model, self.tok, self.mcfg, self.device = model, tokenizer, mcfg, device
        self.answer_format, self.answer_prefix = answer_format, answer_prefix
        self.letter_ids = [self.ids(c)[0] for c in LETTERS[:4]]

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], device=self.device)

    def pre_ids(self) -> torch.Tensor:
        return self.tensor(self.ids(f"{IM_START}system\n{self.mcfg.system_prompt}{IM_END}\n{IM_START}user\n"))

    def prompt_ids(self, question: str, options: list[str]) -> list[int]:
        return self.ids("\n" + question_prompt(question, options) + f"{IM_END}\n{IM_START}assistant\n")

    def pixels(self, frames) -> torch.Tensor:
        return frames_to_pixels(frames, self.model.vision.image_size).to(self.device, self._dtype())

    def _dtype(self):
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def memory(self, pixels, ratio, rope_base=None, intp_groups: int = 1):
        if intp_groups > 1:
            visual = rearrange(pixels, intp_groups, self.model.vision)
            return self.model.encode_video(self.pre_ids(), visual=visual, ratios=None, rope_base=rope_base)
        return self.model.encode_video(self.pre_ids(), pixels, ratios=ratio, rope_base=rope_base)

    @torch.no_grad()
    def letter(self, memory, question, options, rope_base=None) -> int:
        """The letter the model puts first after the answer prefix (greedy, among A-D)."""
        ids = self.prompt_ids(question, options) + self.ids(self.answer_prefix)
        logits, _ = self.model.read(memory, self.tensor(ids), rope_base)
        return int(logits[0, -1, self.letter_ids].argmax())

    @torch.no_grad()
    def free_letter(self, memory, question, options, max_new_tokens: int) -> int:
        """Letter parsed from unconstrained greedy generation; -1 if none."""
        ids = self.prompt_ids(question, options) + self.ids(self.answer_prefix)
        text = self.tok.decode(self.model.generate(memory, self.tensor(ids), max_new_tokens, self.tok.eos_token_id))
        return next((LETTERS.index(c) for c in text if c in LETTERS[:len(options)]), -1)

    def _answer_logits(self, memory, prompt: list[int], answer: list[int], rope_base=None) -> torch.Tensor:
        """Logits [len(answer), V] at the answer's positions with the answer appended (teacher forcing)."""
        logits, _ = self.model.read(memory, self.tensor(prompt + answer), rope_base)
        return logits[0, len(prompt) - 1:-1]

    def answer_ids(self, options, index: int, end: str = "") -> list[int]:
        return self.ids(self.answer_format.format(letter=LETTERS[index], option=options[index]) + end)

    @torch.no_grad()
    def likelihood(self, memory, question, options) -> int:
        """The option whose whole answer (answer_format + end of turn) has the highest mean log-likelihood."""
        prompt = self.prompt_ids(question, options)
        scores = []
        for i in range(len(options)):
            answer = self.answer_ids(options, i, IM_END)
            logp = self._answer_logits(memory, prompt, answer).float().log_softmax(-1)
            scores.append(logp.gather(1, torch.tensor(answer, device=self.device)[:, None]).mean().item())
        return max(range(len(options)), key=scores.__getitem__)

    @torch.no_grad()
    def teacher_forced(self, memory, question, options, answer_index: int, rope_base=None) -> bool:
        """LongVA's exact match: the gold answer (answer_format) appended after the prompt; right
        only if the argmax at every answer position is the answer's token."""
        answer = self.answer_ids(options, answer_index)
        predicted = self._answer_logits(memory, self.prompt_ids(question, options), answer, rope_base).argmax(-1)
        return predicted.tolist() == answer


def vico_qa(ev: Evaluator, version: Path, ecfg: EvalConfig, max_frames: int) -> dict:
    """Accuracy per task on the version's val questions, by option likelihood and by generated letter."""
    import pyarrow.parquet as pq

    qdir = version / "questions"
    if not qdir.exists():
        return {"vico_qa": {}, "vico_qa_letter": {}, "vico_qa_count": {}, "note": f"no questions table in {version}"}
    questions = [q for q in pq.read_table(qdir).to_pylist() if q.get("split") == "val" and q.get("options")]
    try:
        rows = ShardRows(version, "val")
    except ModelUserError:
        return {"vico_qa": {}, "vico_qa_letter": {}, "vico_qa_count": {}, "note": f"no val shards in {version}"}
    frames_of = {}
    for i in range(len(rows)):
        row = rows[i]
        frames_of.setdefault(row["video_id"], row["frames"])
    questions = [q for q in questions if q["video_id"] in frames_of][: ecfg.max_val_samples]
    right, right_letter, count = defaultdict(int), defaultdict(int), defaultdict(int)
    for q in questions:
        frames = frames_of[q["video_id"]]
        pixels = ev.pixels([frames[i] for i in uniform_indices(len(frames), max_frames)])
        memory = ev.memory(pixels, ev.mcfg.ratio)
        count[q["task"]] += 1
        right[q["task"]] += ev.likelihood(memory, q["question"], q["options"]) == q["answer_index"]
        if ecfg.generate_letter:
            right_letter[q["task"]] += ev.free_letter(memory, q["question"], q["options"], ecfg.max_new_tokens) == q["answer_index"]
    return {"vico_qa": {t: right[t] / n for t, n in count.items()},
            "vico_qa_letter": {t: right_letter[t] / n for t, n in count.items()} if ecfg.generate_letter else {},
            "vico_qa_count": dict(count)}


def method_runs(ecfg: EvalConfig, mcfg, train_frames: int) -> list[tuple[str, dict]]:
    runs = []
    for m in ecfg.methods:
        if m == "vst":
            runs += [(f"vst-r{r}", {"kind": "vst", "ratio": r}) for r in ecfg.ratios]
        elif m == "intp":
            runs.append(("intp", {"kind": "intp"}))
        else:
            runs.append(("uniform", {"kind": "uniform", "ratio": mcfg.ratio}))
    return runs


def haystack_videos(version: Path, count: int) -> list[list]:
    """Frames of up to `count` videos for needle haystacks: val videos, else train videos (a small
    version may have no val video; the needle is synthetic, so any of our videos will do)."""
    for split in ("val", "train"):
        try:
            rows = ShardRows(version, split)
        except ModelUserError:
            continue
        found = [f for f in (rows[i]["frames"] for i in range(len(rows))) if f][:count]
        if found:
            return found
    raise ModelUserError(f"no frames in {version}/shards to build needle haystacks from")


def method_memory(ev: Evaluator, spec: dict, frames: list, train_frames: int, text_len: int):
    """The memory one method builds from the frames, and the RoPE base to read it with."""
    dims = ev.model.decoder.dims
    rope_base, groups, ratio = None, 1, spec.get("ratio")
    if spec["kind"] == "uniform":
        frames = [frames[i] for i in uniform_indices(len(frames), train_frames)]
    elif spec["kind"] == "intp":
        # m = T / F groups, no compression, RoPE base scaled by s = new length / trained length.
        groups = max(1, math.ceil(len(frames) / train_frames))
        per_frame = ev.model.vision.tokens_per_frame
        s = context_scale(text_len + len(frames) * per_frame, text_len + train_frames * per_frame)
        rope_base = ntk_rope_base(dims.rope_theta, dims.head_dim, s) if groups > 1 else None
        ratio = None
    return ev.memory(ev.pixels(frames), ratio, rope_base, groups), rope_base


def kv_bytes(memory) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in memory.kv)


def score(ev: Evaluator, memory, needle, rope_base=None, rotate: bool = True, scoring: str = "letter") -> bool:
    """One needle question against a memory. With `rotate`, asked once per rotation of its
    options and right only if every rotation is (VNBench); `scoring` is "letter" (the argmax
    letter after the answer prefix) or "teacher_forced" (LongVA's exact match of the answer)."""
    n = len(needle.options)

    def right(k: int) -> bool:
        options, gold = needle.options[k:] + needle.options[:k], (needle.answer_index - k) % n
        if scoring == "teacher_forced":
            return ev.teacher_forced(memory, needle.question, options, gold, rope_base)
        return ev.letter(memory, needle.question, options, rope_base) == gold

    return all(right(k) for k in (range(n) if rotate else [0]))


def run_cell(ev: Evaluator, spec: dict, frames: list, needle, train_frames: int, text_len: int,
             rotate: bool = True, scoring: str = "letter") -> tuple[bool, int]:
    """One needle question under one method; (correct, KV memory bytes)."""
    memory, rope_base = method_memory(ev, spec, frames, train_frames, text_len)
    return score(ev, memory, needle, rope_base, rotate, scoring), kv_bytes(memory)


def needle_grid(ev: Evaluator, haystacks: list[list], ecfg: EvalConfig, train_frames: int) -> list[dict]:
    """One cell per method x task x style x frame count x depth x scoring. A cell whose frame
    count cannot hold its needles is kept with accuracy None and a `skipped` reason."""
    size = ev.model.vision.image_size
    needles = {task: make_needles(task, ecfg.needle_trials, ecfg.seed, size) for task in ecfg.needle_tasks}
    text_len = {task: ev.pre_ids().shape[1] + len(ev.prompt_ids(ns[0].question, ns[0].options)) for task, ns in needles.items()}
    cuda = ev.device.type == "cuda"
    cells = []
    for name, spec in method_runs(ecfg, ev.mcfg, train_frames):
        for task, style, n_frames, depth in itertools.product(ecfg.needle_tasks, ecfg.needle_style,
                                                              ecfg.needle_frames, ecfg.needle_depths):
            key = {"method": name, "task": task, "style": style, "frames": n_frames, "depth": depth}
            measure = {"memory_measure": "cuda_peak" if cuda else "kv_cache"}
            needed = max(n.footprint(style, ecfg.needle_bar_frames) for n in needles[task])
            if n_frames < needed:
                cells += [key | {"scoring": s, "accuracy": None, "peak_memory_bytes": None, **measure, "seconds": None,
                                 "skipped": f"needs {needed} frames"} for s in ecfg.needle_scoring]
                continue
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            right, seconds, peak = defaultdict(int), defaultdict(float), 0
            for trial, needle in enumerate(needles[task]):
                t0 = time.time()
                frames = place(needle, haystacks[trial % len(haystacks)], n_frames, depth, style, ecfg.needle_bar_frames)
                memory, rope_base = method_memory(ev, spec, frames, train_frames, text_len[task])
                peak, built = max(peak, kv_bytes(memory)), time.time() - t0
                for s in ecfg.needle_scoring:  # one memory serves every scoring; each is timed with it
                    t1 = time.time()
                    right[s] += score(ev, memory, needle, rope_base, ecfg.rotate_options, s)
                    seconds[s] += built + time.time() - t1
            if cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            trials = len(needles[task])
            cells += [key | {"scoring": s, "accuracy": right[s] / trials, "peak_memory_bytes": int(peak), **measure,
                             "seconds": round(seconds[s] / trials, 4)} for s in ecfg.needle_scoring]
    return cells


def heatmap_name(method: str, task: str) -> str:
    """needle_{method}.png for retrieval (the original map), needle_{method}_{task}.png otherwise."""
    return f"needle_{method}.png" if task == "retrieval" else f"needle_{method}_{task}.png"


def heatmaps(cells: list[dict], out: Path) -> list[str]:
    """One picture per method and task: a frames x depth map per style and scoring (blank where skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for method, task in dict.fromkeys((c["method"], c.get("task", "retrieval")) for c in cells):
        mine = [c for c in cells if c["method"] == method and c.get("task", "retrieval") == task]
        frames = sorted({c["frames"] for c in mine})
        depths = sorted({c["depth"] for c in mine})
        panels = list(dict.fromkeys((c.get("style", "frame"), c.get("scoring", "letter")) for c in mine))
        fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True, layout="constrained",
                                 figsize=(len(panels) * (0.8 + 0.6 * len(frames)) + 1.5, 1.6 + 0.5 * len(depths)))
        cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgray")  # skipped: too few frames for the needles
        for ax, (style, scoring) in zip(axes[0], panels):
            acc = {(c["frames"], c["depth"]): c["accuracy"] for c in mine
                   if (c.get("style", "frame"), c.get("scoring", "letter")) == (style, scoring)}
            grid = [[float("nan") if acc.get((f, d)) is None else acc[(f, d)] for f in frames] for d in depths]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap=cmap, aspect="auto")
            ax.set_xticks(range(len(frames)), [str(f) for f in frames])
            ax.set_yticks(range(len(depths)), [f"{int(d * 100)}%" for d in depths])
            ax.set_xlabel("frames")
            ax.set_title(f"{style}, {scoring}", fontsize=9)
        axes[0][0].set_ylabel("needle depth")
        fig.suptitle(f"needle {task}: {method}")
        fig.colorbar(im, ax=list(axes[0]))
        path = out / heatmap_name(method, task)
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    return written


def run_eval(ecfg: EvalConfig, fallback_data: str | None = None, fallback_train_frames: int = 128) -> Path:
    """Writes results.json and one heat map per method into eval.output; returns that folder."""
    from .train import cpu_threads

    with cpu_threads(ecfg.cpu_threads):
        return _run_eval(ecfg, fallback_data, fallback_train_frames)


def _run_eval(ecfg: EvalConfig, fallback_data: str | None, fallback_train_frames: int) -> Path:
    device = torch.device("cuda" if ecfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if ecfg.device == "auto" else ecfg.device))
    model, tokenizer, mcfg, ckpt = load_for_eval(ecfg.checkpoint)
    model.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    run_cfg = _run_config(ckpt)
    version = Path(ecfg.data or run_cfg.get("data") or fallback_data or "")
    train_frames = ecfg.train_frames or run_cfg.get("max_frames") or fallback_train_frames
    if not (version / "shards").is_dir():
        raise ModelUserError(f"no shards in {version} (set eval.data or train.data to a complete version folder)")
    ev = Evaluator(model, tokenizer, mcfg, device, ecfg.answer_format, ecfg.answer_prefix)
    out = Path(ecfg.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {"checkpoint": str(ckpt), "data": str(version), "device": device.type, "train_frames": train_frames}
    results |= vico_qa(ev, version, ecfg, ecfg.max_frames or train_frames)
    haystacks = haystack_videos(version, ecfg.needle_videos)
    results["needle_setup"] = {"tasks": ecfg.needle_tasks, "styles": ecfg.needle_style, "scorings": ecfg.needle_scoring,
                               "bar_frames": ecfg.needle_bar_frames, "trials": ecfg.needle_trials,
                               "rotate_options": ecfg.rotate_options}
    results["needle"] = needle_grid(ev, haystacks, ecfg, train_frames)
    results["heatmaps"] = heatmaps(results["needle"], out)
    results["seconds"] = round(time.time() - t0, 2)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return out


def _run_config(ckpt: Path) -> dict:
    """The train section the checkpoint's run was started with (config.yaml in the run folder)."""
    import yaml

    for folder in (ckpt, *ckpt.parents[:3]):
        path = folder / "config.yaml"
        if path.exists():
            return (yaml.safe_load(path.read_text()) or {}).get("train", {}) or {}
    return {}
