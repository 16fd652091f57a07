"""Video-XL prefill and training-step benchmark on random weights (no Ray, no model hub).

    python bench/videoxl_prefill.py                  # CUDA: Qwen2-7B + CLIP-L/336 shapes, bf16
    python bench/videoxl_prefill.py --tiny           # CPU smoke run with tiny shapes
    python bench/videoxl_prefill.py --out bench.json # also write the numbers as JSON

Prefill = CLIP tower + projector + VST compression of every window at one ratio (16) + the
question. Reports peak memory, seconds, and achieved TFLOP/s against a plain bf16 matmul
measured in the same run, and the cost of each further answer read from the same memory
(another question, or another rotation of the options: the memory does not depend on it). Then one training step (forward, backward, AdamW) of a 1.5B-shaped
model at 128 frames. Written for torch >= 2.5 and transformers 4.45 - 5.x.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vico_pipeline.model.decoder import Decoder, DecoderDims, count_flops_per_token  # noqa: E402
from vico_pipeline.model.vision import VisionSide, encoder_of  # noqa: E402
from vico_pipeline.model.vst import VideoXL  # noqa: E402

QWEN2_7B = DecoderDims(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                       num_kv_heads=4, head_dim=128, rope_theta=1e6)
QWEN2_1_5B = DecoderDims(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                         num_kv_heads=2, head_dim=128, rope_theta=1e6, tie_word_embeddings=True)
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14)
TINY = DecoderDims(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)


def build(dims: DecoderDims, clip: dict, window_tokens: int, device, dtype) -> VideoXL:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init straight into the target dtype: no fp32 copy of 7B weights
    try:
        with torch.device(device):
            decoder = Decoder(dims)
    finally:
        torch.set_default_dtype(old)
    decoder.init_vst(eos_id=0)
    tower = CLIPVisionModel(CLIPVisionConfig(**clip))  # 0.3 B parameters: built in fp32 on the CPU, then moved
    vision = VisionSide(tower, clip["image_size"], clip["patch_size"], dims.hidden_size, chunk_frames=16)
    return VideoXL(decoder, vision, window_tokens).to(device, dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device, dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def vision_flops(clip: dict, llm_width: int, frames: int, layers: int) -> float:
    """Matmul FLOPs of the tower (the `layers` it runs) and the projector, per the shapes."""
    d, inter = clip["hidden_size"], clip["intermediate_size"]
    tokens = (clip["image_size"] // clip["patch_size"]) ** 2 + 1
    layer = tokens * (2 * 4 * d * d + 2 * 2 * d * inter) + 2 * 2 * tokens * tokens * d
    patch = tokens * 2 * 3 * clip["patch_size"] ** 2 * d
    projector = (tokens - 1) * 2 * (d * llm_width + llm_width * llm_width)
    return frames * (layers * layer + patch + projector)


def prefill_flops(model: VideoXL, clip: dict, frames: int, ratio: int, sink: int, question: int) -> float:
    """Decoder FLOPs chunk by chunk (each token attends to memory + its causal prefix) plus vision."""
    dims = model.decoder.dims
    total = sum(count_flops_per_token(dims, i + 1) for i in range(sink))
    memory = sink
    for n in model.window_lengths(frames):
        chunk = n + math.ceil(n / ratio)
        total += chunk * count_flops_per_token(dims, memory + (chunk + 1) / 2)
        memory += math.ceil(n / ratio)
    total += question * count_flops_per_token(dims, memory + (question + 1) / 2)
    total += question * 2 * dims.hidden_size * dims.vocab_size  # lm_head on the question
    return total + vision_flops(clip, dims.hidden_size, frames, len(encoder_of(model.vision.tower).layers))


@torch.no_grad()
def answer_seconds(model: VideoXL, memory, device, question: int, answers: int) -> float:
    """Mean seconds of one more answer (a new question of the same length) read from the memory."""
    times = []
    for _ in range(answers):
        post = torch.randint(0, 100, (1, question), device=device)
        sync(device)
        t0 = time.perf_counter()
        logits, _ = model.read(memory, post, extend=False)
        logits[0, -1].argmax().item()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


@torch.no_grad()
def prefill(model: VideoXL, frames: int, ratio: int, device, dtype, sink=32, question=64, answers=8) -> dict:
    size = model.vision.image_size
    pixels = torch.randn(frames, 3, size, size, device=device, dtype=dtype)
    pre = torch.randint(0, 100, (1, sink), device=device)
    post = torch.randint(0, 100, (1, question), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    memory = model.encode_video(pre, pixels, ratios=ratio)
    logits, _ = model.read(memory, post)
    logits[0, -1].argmax().item()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    flops = prefill_flops(model, CLIP_SHAPE[0], frames, ratio, sink, question)
    answer = answer_seconds(model, memory, device, question, answers)  # every answer after the first
    return {"frames": frames, "ratio": ratio, "memory_tokens": memory.length, "seconds": round(seconds, 4),
            "peak_memory_bytes": peak, "tflops": round(flops / seconds / 1e12, 4), "flops": flops,
            "answer_seconds": round(answer, 5), "answer_fraction": round(answer / seconds, 4)}


def train_step(dims: DecoderDims, clip: dict, frames: int, ratio: int, window_tokens: int, device, steps: int) -> dict:
    """Forward + backward + AdamW at `frames` frames: fp32 master weights, bf16 autocast on CUDA,
    gradient checkpointing on (as a 128-frame 1.5B run needs it on one GPU)."""
    model = build(dims, clip, window_tokens, device, torch.float32)
    model.set_gradient_checkpointing(True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    size = model.vision.image_size
    pixels = torch.randn(frames, 3, size, size, device=device)
    pre = torch.randint(0, 100, (1, 32), device=device)
    post = torch.randint(0, 100, (1, 128), device=device)
    labels = post.clone()
    labels[:, :64] = -100
    ratios = [ratio] * model.window_count(frames)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):  # the first step warms up
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(pre, pixels, post, labels, ratios)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = sum(times[1:]) / steps
    tokens = frames * model.vision.tokens_per_frame
    return {"model": "qwen2-1.5b-shaped" if dims is QWEN2_1_5B else "tiny", "frames": frames, "ratio": ratio,
            "seconds_per_step": round(sec, 4), "frames_per_second": round(frames / sec, 2),
            "visual_tokens_per_second": round(tokens / sec, 1),
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}


CLIP_SHAPE = [CLIP_L_336]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (runs on CPU)")
    ap.add_argument("--frames", type=int, nargs="*", default=None)
    ap.add_argument("--ratio", type=int, default=16)
    ap.add_argument("--train-frames", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        print("no CUDA GPU: run with --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dims, clip = (TINY, TINY_CLIP) if args.tiny else (QWEN2_7B, CLIP_L_336)
    CLIP_SHAPE[0] = clip
    window = 16 if args.tiny else 1440
    frames = args.frames or ([4, 8, 16] if args.tiny else [128, 512, 1024, 2048])
    ratio = 4 if args.tiny and args.ratio == 16 else args.ratio
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "shapes": "tiny" if args.tiny else "qwen2-7b + clip-l/336"}
    import transformers

    report["transformers"] = transformers.__version__
    report["matmul_tflops"] = round(matmul_tflops(device, dtype, 512 if args.tiny else 8192), 3)
    model = build(dims, clip, window, device, dtype).eval()
    prefill(model, frames[0], ratio, device, dtype)  # warm-up
    report["prefill"] = []
    for n in frames:
        row = prefill(model, n, ratio, device, dtype)
        row["fraction_of_matmul"] = round(row["tflops"] / report["matmul_tflops"], 3)
        report["prefill"].append(row)
        print(json.dumps(row), flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_train:
        report["train_step"] = train_step(TINY if args.tiny else QWEN2_1_5B, clip, 8 if args.tiny else args.train_frames,
                                          ratio, window, device, args.train_steps)
        print(json.dumps(report["train_step"]), flush=True)
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def markdown(r: dict) -> str:
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.1f} GiB"  # noqa: E731
    lines = [f"{r['date']}, {r['device']}, torch {r['torch']}, transformers {r['transformers']}, {r['dtype']}, {r['shapes']}; "
             f"{r['dtype']} matmul: {r['matmul_tflops']} TFLOP/s", "",
             "| frames | ratio | memory tokens | seconds | peak memory | TFLOP/s | of matmul | each further answer | of a prefill |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in r["prefill"]:
        lines.append(f"| {p['frames']} | {p['ratio']} | {p['memory_tokens']} | {p['seconds']} | {gib(p['peak_memory_bytes'])} | "
                     f"{p['tflops']} | {p['fraction_of_matmul']:.0%} | {p['answer_seconds']} s | {p['answer_fraction']:.1%} |")
    if "train_step" in r:
        t = r["train_step"]
        lines += ["", f"training step ({t['model']}, {t['frames']} frames, ratio {t['ratio']}): {t['seconds_per_step']} s/step, "
                      f"{t['frames_per_second']} frames/s, peak {gib(t['peak_memory_bytes'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
