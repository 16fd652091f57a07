"""`vico eval`: VICO val accuracy per task, and the needle grid for VST, INTP and uniform subsampling."""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import torch

from vico_pipeline.samples import time_header

from .checkpoint import load_for_eval
from .config import EvalConfig, ModelUserError
from .data import IM_END, IM_START, ShardRows, question_prompt
from .intp import intp_rope_base, rearrange
from .needle import make_needles, place
from .vision import frames_to_pixels, uniform_indices

LETTERS = "ABCDEFGH"


class Evaluator:
    """A loaded checkpoint plus the prompt layout. A video's memory is built once and read by every
    question about it: reading never changes a memory."""

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

    def prompt_ids(self, question: str, options: list[str], header: str = "") -> list[int]:
        """The text after the video; `header` (the time header) opens it, as in training."""
        header = header + "\n" if header else ""
        return self.ids("\n" + header + question_prompt(question, options) + f"{IM_END}\n{IM_START}assistant\n")

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
        logits, _ = self.model.read(memory, self.tensor(ids), rope_base, extend=False)
        return int(logits[0, -1, self.letter_ids].argmax())

    @torch.no_grad()
    def free_letter(self, memory, question, options, max_new_tokens: int, header: str = "") -> int:
        """Letter parsed from unconstrained greedy generation; -1 if none."""
        ids = self.prompt_ids(question, options, header) + self.ids(self.answer_prefix)
        text = self.tok.decode(self.model.generate(memory, self.tensor(ids), max_new_tokens, self.tok.eos_token_id))
        return next((LETTERS.index(c) for c in text if c in LETTERS[:len(options)]), -1)

    def _answer_logits(self, memory, prompt: list[int], answer: list[int], rope_base=None) -> torch.Tensor:
        """Logits [len(answer), V] at the answer's positions with the answer appended (teacher forcing)."""
        logits, _ = self.model.read(memory, self.tensor(prompt + answer), rope_base, extend=False)
        return logits[0, len(prompt) - 1:-1]

    def answer_ids(self, options, index: int, end: str = "") -> list[int]:
        return self.ids(self.answer_format.format(letter=LETTERS[index], option=options[index]) + end)

    @torch.no_grad()
    def likelihood(self, memory, question, options, header: str = "") -> int:
        """The option whose whole answer (answer_format + end of turn) has the highest mean log-likelihood."""
        prompt = self.prompt_ids(question, options, header)
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
    """Accuracy per task on the version's val questions, by option likelihood and by generated letter.
    Each video is encoded and compressed once; all its questions read that one memory. An out-of-memory
    error loses only the video (its memory) or the question it happened in: the task's status says
    `oom`, and the rest goes on, as a needle cell does."""
    import pyarrow.parquet as pq

    empty = {"vico_qa": {}, "vico_qa_chance": {}, "vico_qa_letter": {}, "vico_qa_count": {}, "vico_qa_status": {}}
    qdir = version / "questions"
    if not qdir.exists():
        return empty | {"note": f"no questions table in {version}"}
    questions = [q for q in pq.read_table(qdir).to_pylist() if q.get("split") == "val" and q.get("options")]
    try:
        rows = ShardRows(version, "val")
    except ModelUserError:
        return empty | {"note": f"no val shards in {version}"}
    video_of = {}
    for i in range(len(rows)):
        row = rows[i]
        video_of.setdefault(row["video_id"], row)
    questions = [q for q in questions if q["video_id"] in video_of][: ecfg.max_val_samples]
    by_video = defaultdict(list)
    for q in questions:
        by_video[q["video_id"]].append(q)
    right, right_letter, count, chance = defaultdict(int), defaultdict(int), defaultdict(int), defaultdict(float)
    lost, requested = defaultdict(int), []  # questions lost to out-of-memory errors, per task
    prefill = answer = 0.0
    for video_id, video_questions in by_video.items():
        t0 = time.perf_counter()
        frames, header = shown_frames(video_of[video_id], max_frames)
        memory = out_of_memory(lambda: ev.memory(ev.pixels(frames), ev.mcfg.ratio), ev.device, requested)
        t1 = time.perf_counter()
        for q in video_questions:
            task = q["task"]
            chance[task] += 1 / len(q["options"])
            got = None if memory is None else out_of_memory(lambda: answer_question(ev, memory, q, header, ecfg),
                                                          ev.device, requested)
            if got is None:
                lost[task] += 1
                continue
            count[task] += 1
            right[task] += got[0]
            right_letter[task] += got[1]
        memory = None  # freed before the next video's is built
        prefill, answer = prefill + t1 - t0, answer + time.perf_counter() - t1
    tasks = list(dict.fromkeys(q["task"] for q in questions))
    score = lambda hits, t: hits[t] / count[t] if count[t] else None  # noqa: E731 (None: every question lost)
    return {"vico_qa": {t: score(right, t) for t in tasks},
            "vico_qa_chance": {t: chance[t] / (count[t] + lost[t]) for t in tasks},  # a uniform guess among the options
            "vico_qa_letter": {t: score(right_letter, t) for t in tasks} if ecfg.generate_letter else {},
            "vico_qa_count": {t: count[t] for t in tasks},
            # ok, or oom: some of the task's questions (vico_qa_oom of them) hit an out-of-memory error and
            # are not in its accuracy; memory_requested_bytes is the largest allocation that failed.
            "vico_qa_status": {t: "oom" if lost[t] else "ok" for t in tasks},
            "vico_qa_oom": {t: lost[t] for t in tasks if lost[t]},
            **({"vico_qa_memory_requested_bytes": max((b for b in requested if b), default=None)} if lost else {}),
            "vico_qa_timing": {"videos": len(by_video), "questions": len(questions),
                               "prefill_seconds": round(prefill / max(1, len(by_video)), 4),
                               "answer_seconds": round(answer / max(1, len(questions)), 4)}}


def answer_question(ev: Evaluator, memory, q: dict, header: str, ecfg: EvalConfig) -> tuple[bool, bool]:
    """(right by option likelihood, right by the generated letter) for one VICO question."""
    by_likelihood = ev.likelihood(memory, q["question"], q["options"], header) == q["answer_index"]
    by_letter = ecfg.generate_letter and ev.free_letter(memory, q["question"], q["options"], ecfg.max_new_tokens,
                                                        header) == q["answer_index"]
    return by_likelihood, bool(by_letter)


def out_of_memory(work, device, requested: list):
    """work(), or None after an out-of-memory error (its allocation noted in `requested`, the memory freed)."""
    try:
        return work()
    except torch.OutOfMemoryError as err:
        requested.append(requested_bytes(str(err)))
    free_device_memory(device)  # outside the except block, so the failed work's tensors can be freed
    return None


def shown_frames(row: dict, max_frames: int) -> tuple[list, str]:
    """A video's frames spread evenly up to max_frames, and the time header naming them. The same
    for every question of the video (no evidence-aware choice: that would use the answer), so one
    memory serves them all."""
    frames, times = row["frames"] or [], [float(t) for t in row.get("frame_times_s") or []]
    keep = uniform_indices(len(frames), max_frames)
    if len(times) != len(frames):
        return [frames[i] for i in keep], ""
    shown = [times[i] for i in keep]
    duration = float(row.get("duration_s") or (times[-1] if times else 0.0))
    return [frames[i] for i in keep], time_header(duration, shown)


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


def method_inputs(ev: Evaluator, spec: dict, frames: list, train_frames: int, text_len: int):
    """(frames, ratio, RoPE base, INTP groups) one method reads a cell's frames with."""
    dims = ev.model.decoder.dims
    if spec["kind"] == "uniform":
        return [frames[i] for i in uniform_indices(len(frames), train_frames)], spec["ratio"], dims.rope_theta, 1
    if spec["kind"] == "intp":
        # m = T / F groups, no compression; RoPE scaled by the sequence length over the LLM's trained context.
        target = text_len + len(frames) * ev.model.vision.tokens_per_frame
        base = intp_rope_base(dims.rope_theta, dims.head_dim, target, dims.max_position_embeddings)
        return frames, None, base, max(1, math.ceil(len(frames) / train_frames))
    return frames, spec["ratio"], dims.rope_theta, 1


def method_memory(ev: Evaluator, spec: dict, frames: list, train_frames: int, text_len: int):
    """The memory one method builds from the frames, and the RoPE base to read it with."""
    frames, ratio, rope_base, groups = method_inputs(ev, spec, frames, train_frames, text_len)
    return ev.memory(ev.pixels(frames), ratio, rope_base, groups), rope_base


def kv_bytes(memory) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in memory.kv)


def rotations(needle, rotate: bool) -> list[tuple[list[str], int]]:
    """(options, gold index) per way the question is asked: every rotation of the options, or as drawn."""
    n = len(needle.options)
    return [(needle.options[k:] + needle.options[:k], (needle.answer_index - k) % n) for k in (range(n) if rotate else [0])]


def chance_level(n_options: int, rotate: bool) -> float:
    """A uniform guess's accuracy: 1/n, or (1/n)^n when every rotation must be right (1/256 for 4)."""
    return (1 / n_options) ** (n_options if rotate else 1)


def answers(ev: Evaluator, memory, needle, rope_base=None, rotate: bool = True, scoring: str = "letter") -> list:
    """The model's answer to each rotation, all read from one memory: the letter index, or (teacher
    forcing) whether the whole gold answer is the argmax."""
    out = []
    for options, gold in rotations(needle, rotate):
        if scoring == "teacher_forced":
            out.append(ev.teacher_forced(memory, needle.question, options, gold, rope_base))
        else:
            out.append(ev.letter(memory, needle.question, options, rope_base))
    return out


def score(ev: Evaluator, memory, needle, rope_base=None, rotate: bool = True, scoring: str = "letter") -> bool:
    """One needle question against a memory. With `rotate`, asked once per rotation of its
    options and right only if every rotation is (VNBench); `scoring` is "letter" (the argmax
    letter after the answer prefix) or "teacher_forced" (LongVA's exact match of the answer)."""
    got = answers(ev, memory, needle, rope_base, rotate, scoring)
    if scoring == "teacher_forced":
        return all(got)
    return all(letter == gold for letter, (_, gold) in zip(got, rotations(needle, rotate)))


def run_cell(ev: Evaluator, spec: dict, frames: list, needle, train_frames: int, text_len: int,
             rotate: bool = True, scoring: str = "letter") -> tuple[bool, int]:
    """One needle question under one method; (correct, KV memory bytes)."""
    memory, rope_base = method_memory(ev, spec, frames, train_frames, text_len)
    return score(ev, memory, needle, rope_base, rotate, scoring), kv_bytes(memory)


def cell_key(cell: dict) -> tuple:
    return tuple(cell.get(k) for k in ("method", "task", "style", "frames", "depth", "scoring"))


def measure(ev: Evaluator, spec: dict, needles: list, haystacks: list, n_frames: int, depth: float, style: str,
            ecfg: EvalConfig, train_frames: int, text_len: int) -> dict:
    """Every trial of one (method, task, style, frames, depth): one memory per needle video, read by
    every scoring and every rotation. Returns totals over the trials."""
    right, answer_s = defaultdict(int), defaultdict(float)
    prefill_s, peak = 0.0, 0
    for trial, needle in enumerate(needles):
        frames = place(needle, haystacks[trial % len(haystacks)], n_frames, depth, style, ecfg.needle_bar_frames)
        t0 = time.perf_counter()
        memory, rope_base = method_memory(ev, spec, frames, train_frames, text_len)
        prefill_s += time.perf_counter() - t0
        peak = max(peak, kv_bytes(memory))
        for s in ecfg.needle_scoring:
            t1 = time.perf_counter()
            right[s] += score(ev, memory, needle, rope_base, ecfg.rotate_options, s)
            answer_s[s] += time.perf_counter() - t1
        del memory
    return {"right": right, "answer_s": answer_s, "prefill_s": prefill_s, "kv_peak": peak}


def requested_bytes(message: str) -> int | None:
    """The allocation an out-of-memory error asked for ("Tried to allocate 2.50 GiB"), in bytes."""
    found = re.search(r"Tried to allocate ([\d.]+) ?([KMGT]i?B|B)", message)
    if not found:
        return None
    units = {"B": 0, "KiB": 1, "MiB": 2, "GiB": 3, "TiB": 4, "KB": 1, "MB": 2, "GB": 3, "TB": 4}
    return int(float(found.group(1)) * 1024 ** units[found.group(2)])


def free_device_memory(device) -> None:
    gc.collect()  # the failed cell's tensors are unreferenced once its exception is gone
    if device.type == "cuda":
        torch.cuda.empty_cache()


def needle_cells(ev: Evaluator, spec: dict, key: dict, needles: list, haystacks: list, ecfg: EvalConfig,
                 train_frames: int, text_len: int) -> list[dict]:
    """The cells (one per scoring) of one (method, task, style, frames, depth): measured, skipped
    (too few frames for the needles) or out of memory (recorded, freed, and the grid goes on)."""
    cuda = ev.device.type == "cuda"
    n_options, rotate = len(needles[0].options), ecfg.rotate_options
    rope_base = method_inputs(ev, spec, [None] * key["frames"], train_frames, text_len)[2]
    base = key | {"chance": chance_level(n_options, rotate), "rope_base": rope_base,
                  "memory_measure": "cuda_peak" if cuda else "kv_cache"}
    blank = {"accuracy": None, "peak_memory_bytes": None, "seconds": None, "prefill_seconds": None, "answer_seconds": None}
    needed = max(n.footprint(key["style"], ecfg.needle_bar_frames) for n in needles)
    if key["frames"] < needed:
        return [base | {"scoring": s} | blank | {"status": "skipped", "skipped": f"needs {needed} frames"}
                for s in ecfg.needle_scoring]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    oom = None
    try:
        m = measure(ev, spec, needles, haystacks, key["frames"], key["depth"], key["style"], ecfg, train_frames, text_len)
    except torch.cuda.OutOfMemoryError as err:
        oom = {"status": "oom", "memory_requested_bytes": requested_bytes(str(err))}
    if oom:  # outside the except block, so the failed cell's tensors can be freed
        free_device_memory(ev.device)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        return [base | {"scoring": s} | blank | {"peak_memory_bytes": peak} | oom for s in ecfg.needle_scoring]
    peak = m["kv_peak"]
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    trials, per_question = len(needles), n_options if rotate else 1
    return [base | {"scoring": s, "accuracy": m["right"][s] / trials, "peak_memory_bytes": int(peak),
                    "seconds": round((m["prefill_s"] + m["answer_s"][s]) / trials, 4),  # per question
                    "prefill_seconds": round(m["prefill_s"] / trials, 4),  # per needle video
                    "answer_seconds": round(m["answer_s"][s] / (trials * per_question), 5),  # per answer read
                    "status": "ok"}
            for s in ecfg.needle_scoring]


def needle_grid(ev: Evaluator, haystacks: list[list], ecfg: EvalConfig, train_frames: int,
                done: list[dict] = (), on_cells=None) -> list[dict]:
    """One cell per method x task x style x frame count x depth x scoring. `done`: cells of an
    earlier run of the same setup, kept as they are (out-of-memory ones run again with
    eval.retry_oom); `on_cells(cells)` gets every cell known so far after each new one."""
    size = ev.model.vision.image_size
    needles = {task: make_needles(task, ecfg.needle_trials, ecfg.seed, size) for task in ecfg.needle_tasks}
    text_len = {task: ev.pre_ids().shape[1] + len(ev.prompt_ids(ns[0].question, ns[0].options)) for task, ns in needles.items()}
    known = {cell_key(c): c for c in done if not (ecfg.retry_oom and c.get("status") == "oom")}
    cells = []
    for name, spec in method_runs(ecfg, ev.mcfg, train_frames):
        for task, style, n_frames, depth in itertools.product(ecfg.needle_tasks, ecfg.needle_style,
                                                              ecfg.needle_frames, ecfg.needle_depths):
            key = {"method": name, "task": task, "style": style, "frames": n_frames, "depth": depth}
            earlier = [known.get(cell_key(key | {"scoring": s})) for s in ecfg.needle_scoring]
            if all(earlier):  # finished in an earlier run
                cells += earlier
                continue
            new = needle_cells(ev, spec, key, needles[task], haystacks, ecfg, train_frames, text_len[task])
            cells += new
            known.update((cell_key(c), c) for c in new)
            if on_cells:
                on_cells(list(known.values()))
    return cells


def heatmap_name(method: str, task: str) -> str:
    """needle_{method}.png for retrieval (the original map), needle_{method}_{task}.png otherwise."""
    return f"needle_{method}.png" if task == "retrieval" else f"needle_{method}_{task}.png"


def panel(cells: list[dict], frames: list[int], depths: list[float]):
    """A depth x frames grid of accuracies (NaN where skipped or out of memory) and the
    (row, column) of out-of-memory squares, which the map marks apart from 0% squares."""
    at = {(c["frames"], c["depth"]): c for c in cells}
    grid = [[float("nan") if at.get((f, d), {}).get("accuracy") is None else at[(f, d)]["accuracy"] for f in frames]
            for d in depths]
    oom = [(i, j) for i, d in enumerate(depths) for j, f in enumerate(frames) if at.get((f, d), {}).get("status") == "oom"]
    return grid, oom


def chance_text(chance: float) -> str:
    return f"chance {chance:.2%} (1/{round(1 / chance)})"


def heatmaps(cells: list[dict], out: Path) -> list[str]:
    """One picture per method and task: a frames x depth map per style and scoring; grey where
    skipped, black "OOM" where out of memory; the title states the chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    written = []
    for method, task in dict.fromkeys((c["method"], c.get("task", "retrieval")) for c in cells):
        mine = [c for c in cells if c["method"] == method and c.get("task", "retrieval") == task]
        frames = sorted({c["frames"] for c in mine})
        depths = sorted({c["depth"] for c in mine})
        panels = list(dict.fromkeys((c.get("style", "frame"), c.get("scoring", "letter")) for c in mine))
        fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True, layout="constrained",
                                 figsize=(len(panels) * (0.8 + 0.6 * len(frames)) + 1.5, 1.9 + 0.5 * len(depths)))
        cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgray")  # skipped: too few frames for the needles
        for ax, (style, scoring) in zip(axes[0], panels):
            grid, oom = panel([c for c in mine if (c.get("style", "frame"), c.get("scoring", "letter")) == (style, scoring)],
                              frames, depths)
            im = ax.imshow(grid, vmin=0, vmax=1, cmap=cmap, aspect="auto")
            for i, j in oom:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="black"))
                ax.text(j, i, "OOM", color="white", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(frames)), [str(f) for f in frames])
            ax.set_yticks(range(len(depths)), [f"{int(d * 100)}%" for d in depths])
            ax.set_xlabel("frames")
            ax.set_title(f"{style}, {scoring}", fontsize=9)
        axes[0][0].set_ylabel("needle depth")
        chance = next((c["chance"] for c in mine if c.get("chance")), None)
        fig.suptitle(f"needle {task}: {method}" + (f"; {chance_text(chance)}" if chance else ""))
        fig.colorbar(im, ax=list(axes[0]))
        path = out / heatmap_name(method, task)
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    return written


def run_eval(ecfg: EvalConfig, fallback_data: str | None = None, fallback_train_frames: int = 128,
             on_cells=None) -> Path:
    """Writes results.json (as each needle cell finishes) and one heat map per method into eval.output;
    `on_cells(cells)` gets every needle cell known so far after each new one (the CLI prints them)."""
    from .train import cpu_threads

    with cpu_threads(ecfg.cpu_threads):
        return _run_eval(ecfg, fallback_data, fallback_train_frames, on_cells)


def write_json(path: Path, data: dict) -> None:
    """Atomic: a crash mid-write leaves the previous file, never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def earlier_results(path: Path, setup: dict) -> dict:
    """An earlier results.json of the same setup (checkpoint, data, needle and QA settings), to resume; else {}."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return old if all(old.get(k) == v for k, v in setup.items()) else {}


def _run_eval(ecfg: EvalConfig, fallback_data: str | None, fallback_train_frames: int, on_cells=None) -> Path:
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
    path = out / "results.json"
    t0 = time.time()
    setup = {"checkpoint": str(ckpt), "data": str(version), "device": device.type, "train_frames": train_frames,
             "vico_qa_setup": ecfg.model_dump(include={"max_val_samples", "max_frames", "generate_letter", "answer_format",
                                                       "answer_prefix", "max_new_tokens"}),
             "needle_setup": {"tasks": ecfg.needle_tasks, "styles": ecfg.needle_style, "scorings": ecfg.needle_scoring,
                              "bar_frames": ecfg.needle_bar_frames, "trials": ecfg.needle_trials,
                              "rotate_options": ecfg.rotate_options, "videos": ecfg.needle_videos, "seed": ecfg.seed}}
    earlier = earlier_results(path, setup)
    results = dict(setup)
    qa_oom = "oom" in earlier.get("vico_qa_status", {}).values()
    if "vico_qa" in earlier and not (ecfg.retry_oom and qa_oom):  # resumed: the QA part finished before
        results |= {k: v for k, v in earlier.items() if k.startswith("vico_qa") or k == "note"}
    else:
        results |= vico_qa(ev, version, ecfg, ecfg.max_frames or train_frames)
    write_json(path, results | {"needle": earlier.get("needle", [])})
    haystacks = haystack_videos(version, ecfg.needle_videos)
    results["needle"] = needle_grid(ev, haystacks, ecfg, train_frames, earlier.get("needle", []),
                                    on_cells=lambda cells: (write_json(path, results | {"needle": cells}),
                                                            on_cells and on_cells(cells)))
    results["heatmaps"] = heatmaps(results["needle"], out)
    results["seconds"] = round(time.time() - t0, 2)
    write_json(path, results)
    return out


def _run_config(ckpt: Path) -> dict:
    """The train section the checkpoint's run was started with (config.yaml in the run folder)."""
    import yaml

    for folder in (ckpt, *ckpt.parents[:3]):
        path = folder / "config.yaml"
        if path.exists():
            return (yaml.safe_load(path.read_text()) or {}).get("train", {}) or {}
    return {}
