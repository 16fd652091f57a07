"""Config sections `model:`, `train:` and `eval:` for Video-XL; pydantic only, no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from vico_pipeline.errors import ModelUserError


class ModelConfig(BaseModel):
    """The Video-XL model: a Qwen2-family decoder, a CLIP vision tower, and the VST memory.

    With `llm_path` / `vision_path` set, dims come from those local Hugging Face folders
    (`from_pretrained`); otherwise the dims below build a randomly initialised model.
    """

    model_config = ConfigDict(extra="forbid")

    # LLM (Qwen2 layout); ignored where llm_path is set.
    llm_path: str | None = None
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768  # the LLM's trained context (Qwen2's); INTP scales RoPE beyond it
    rope_linear_factor: float = 1.0  # rope_scaling "linear": positions divided by this factor
    # Vision tower (CLIP ViT); ignored where vision_path is set.
    vision_path: str | None = None
    image_size: int = 56
    patch_size: int = 14
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    vision_chunk_frames: int = 16
    # Which CLIP output feeds the projector (LLaVA's mm_vision_select_layer / _feature). None: the
    # value in llm_path's config.json, else LLaVA's defaults (-1 = last layer, patch = class token
    # dropped), which the authors' finetune scripts leave as they are.
    vision_select_layer: int | None = None
    vision_select_feature: str | None = None  # "patch" or "cls_patch"
    # Tokenizer: a local folder; empty means "train a small byte-level BPE on the shards' text".
    tokenizer_path: str | None = None
    # VST memory. window_tokens, ratios and vst_init come from the beacon_* keys of llm_path's config.json
    # where it has them (the authors' checkpoint).
    window_tokens: int = 1440
    ratios: list[int] = Field(default_factory=lambda: [2, 4, 8, 12, 16])
    ratio: int = 8
    vst_init: str = "eos"  # "eos" copies the EOS embedding, "random" keeps the random init
    system_prompt: str = "You are a helpful assistant."
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.vst_init not in ("eos", "random"):
            raise ValueError("model.vst_init must be 'eos' or 'random'")
        if self.ratio < 1 or any(r < 1 for r in self.ratios):
            raise ValueError("model.ratio and model.ratios must be >= 1")
        if self.vision_select_feature not in (None, "patch", "cls_patch"):
            raise ValueError("model.vision_select_feature must be 'patch' or 'cls_patch'")
        return self


class TrainConfig(BaseModel):
    """`vico train`: trains on a version's `shards/train`, writes into `output`."""

    model_config = ConfigDict(extra="forbid")

    data: str = "output/demo/v1"
    output: str = "output/runs/tiny"
    max_steps: int = 20
    # The step where the cosine reaches 0 (None: max_steps). A run meant to be extended later sets it to
    # the final step count, so `--resume` with a larger max_steps goes on along the same schedule.
    schedule_steps: int | None = None
    lr: float = 1e-4
    vision_lr: float | None = None  # None: same as lr; 0 freezes the vision tower
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    grad_accum: int = 1
    grad_clip: float = 1.0
    max_frames: int = 128
    ratios: list[int] | None = None  # None: model.ratios
    max_text_tokens: int = 1024
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    # A run folder with checkpoints is resumed when its config is the same; `resume: true` (`--resume`)
    # also resumes it under a changed config, the learning rate going on from where it was.
    resume: bool = False
    # `--new-schedule`: a resumed run whose schedule ends before max_steps gets a fresh warm-up and cosine
    # from lr over the added steps (without it, such a run is refused rather than trained at a rate of 0).
    new_schedule: bool = False
    # Parts that do not train (no gradient, no optimizer state): vision (the CLIP tower), projector,
    # llm (the decoder without its VST parts), vst (the VST embedding and projections). Video-XL's
    # stage 1 is [vision, llm]: projector and VST only.
    freeze: list[str] = Field(default_factory=list)
    # A run folder or checkpoint whose weights start this run (stage 2 from stage 1): weights only, a new
    # optimizer and schedule; its tokenizer is used. Ignored once this run has checkpoints of its own.
    init_from: str | None = None
    pack_questions: bool = False  # several questions a conversation, none answerable from an earlier turn
    allow_stand_in_data: bool = False  # train on data that stand-in engines (describe, template, rules) made
    # Recompute each decoder layer's and CLIP layer's activations in the backward pass
    # (`gradient_checkpointing` is the older name of the same key).
    activation_checkpointing: bool = Field(False, validation_alias=AliasChoices("activation_checkpointing",
                                                                                "gradient_checkpointing"))
    bf16: bool = True  # on CUDA: autocast (ddp) or bf16 parameters and compute with fp32 reduction (fsdp)
    # How workers share the model: ddp (a whole copy each, gradients averaged) or fsdp (PyTorch FSDP2:
    # parameters, gradients and optimizer state sharded, one unit a decoder layer and a CLIP layer).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    cpu_offload: bool = False  # fsdp: keep the parameter, gradient and optimizer shards in CPU memory
    workers: int = 0  # Ray Train workers; 0 or 1 trains in this process
    use_gpu: bool = False
    ray_address: str | None = None  # None starts a local Ray for workers > 1
    cpu_threads: int | None = None  # torch intra-op threads on CPU; 1 is fastest on a small, busy machine
    # DataLoader worker processes that decode and normalise frames ahead of the step (0: in the training
    # process), and how many samples each keeps ready.
    loader_workers: int = 0
    loader_prefetch: int = 2

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        parts = ("vision", "projector", "llm", "vst")
        if set(self.freeze) - set(parts) or len(set(self.freeze)) < len(self.freeze):
            raise ValueError(f"train.freeze: {self.freeze}; use distinct values among {', '.join(parts)}")
        if len(self.freeze) == len(parts):
            raise ValueError("train.freeze: every part is frozen, nothing would train")
        if self.schedule_steps is not None and self.schedule_steps < self.max_steps:
            raise ValueError(f"train.schedule_steps={self.schedule_steps} is below train.max_steps={self.max_steps}: "
                             "the rate would be 0 for the last steps")
        if self.loader_workers < 0 or self.loader_prefetch < 1:
            raise ValueError("train.loader_workers must be >= 0 and train.loader_prefetch >= 1")
        return self


class EvalConfig(BaseModel):
    """`vico eval`: VICO val accuracy and the needle grid, for each long-context method."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = "output/runs/tiny"  # a run folder (latest checkpoint) or a checkpoint folder
    data: str | None = None  # version folder for shards/val; None: the one the run trained on
    output: str = "output/eval/tiny"
    max_val_samples: int | None = 64
    max_frames: int | None = None  # frames for VICO val; None: the training cap
    generate_letter: bool = True
    # How an answer looks in the training conversations (the demo's are "(C)"); option
    # likelihood scores this text for each option, the letter is read after answer_prefix.
    answer_format: str = "({letter})"
    answer_prefix: str = "("
    max_new_tokens: int = 4
    needle_frames: list[int] = Field(default_factory=lambda: [4, 8, 16])
    needle_depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    needle_trials: int = 2
    rotate_options: bool = True  # a needle counts only if answered right under every rotation of its options
    # Needle tasks (retrieval, ordering of 4 needles, counting of copies), how needles enter the
    # video (frame: inserted pictures; bar: "The secret word is X" drawn onto needle_bar_frames
    # consecutive sampled frames) and how answers are scored (letter: the argmax letter after
    # answer_prefix; teacher_forced: answer_format appended, right only if the argmax is the
    # answer token at every position). Each takes one value or a list.
    needle_tasks: list[str] = Field(default_factory=lambda: ["retrieval"])
    needle_style: list[str] = Field(default_factory=lambda: ["frame"])
    needle_scoring: list[str] = Field(default_factory=lambda: ["letter"])
    needle_bar_frames: int = 2
    needle_videos: int = 2  # haystack videos taken from the val shards
    methods: list[str] = Field(default_factory=lambda: ["vst", "intp", "uniform"])
    ratios: list[int] = Field(default_factory=lambda: [8, 16])
    train_frames: int | None = None  # F for INTP (m*F frames) and uniform subsampling; None: train.max_frames
    seed: int = 0
    device: str = "auto"
    cpu_threads: int | None = None
    retry_oom: bool = False  # a rerun keeps every recorded needle cell; true runs the out-of-memory ones again

    @field_validator("needle_tasks", "needle_style", "needle_scoring", mode="before")
    @classmethod
    def _one_or_list(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        for name, allowed in (("needle_tasks", ("retrieval", "ordering", "counting")), ("needle_style", ("frame", "bar")),
                              ("needle_scoring", ("letter", "teacher_forced"))):
            values = getattr(self, name)
            if not values or set(values) - set(allowed) or len(set(values)) < len(values):
                raise ValueError(f"eval.{name}: {values}; use distinct values among {', '.join(allowed)}")
        if self.needle_bar_frames < 1:
            raise ValueError("eval.needle_bar_frames must be >= 1")
        unknown = set(self.methods) - {"vst", "intp", "uniform"}
        if unknown:
            raise ValueError(f"eval.methods: unknown {sorted(unknown)}; use vst, intp, uniform")
        if any(not 0.0 <= d <= 1.0 for d in self.needle_depths):
            raise ValueError("eval.needle_depths must lie in [0, 1]")
        return self
