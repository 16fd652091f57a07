"""A tiny random LLaVA model with its processor, saved with save_pretrained.

For tests and the caption benchmark on machines with no model hub: a real
model class, a real processor and a byte-level BPE tokenizer trained here on
a few lines, so every code path of the `transformers` and `openai` engines
runs against real parts. Its output is random text, which is the point for
the clue validator.
"""
from __future__ import annotations

import json
import os

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

_CORPUS = [
    "A red circle moves from left to right across a blue background.",
    "The camera pans over a green field; a person walks towards a house.",
    '{"caption": "a dog runs", "key_event": "the dog jumps over a fence"}',
    '{"events": [{"clip_id": "abc-00001", "clue": "a car stops at the light"}]}',
    "Scene 3: a yellow square moves top to bottom. Text on screen reads hello.",
    "user: describe the frames. assistant: the frames show a kitchen.",
]


def build_tiny_vlm(path: str, image_size: int = 32, seed: int = 0) -> str:
    """Write a tiny random LlavaForConditionalGeneration + LlavaProcessor to `path`; returns it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<image>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    tokenizer.padding_side = "left"  # batched generation appends to the right
    patch = 8
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=image_size, patch_size=patch, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_lm(path: str, seed: int = 0) -> str:
    """A tiny random text-only LlamaForCausalLM with its tokenizer (a clue model's shape)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    vlm = build_tiny_vlm(path + "-vlm", seed=seed)  # reuse its trained tokenizer
    tokenizer = AutoTokenizer.from_pretrained(vlm)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    # A text model's tokenizer names no multimodal processor (the VLM's did).
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path) as handle:
        tokenizer_config = json.load(handle)
    tokenizer_config.pop("processor_class", None)
    with open(config_path, "w") as handle:
        json.dump(tokenizer_config, handle, indent=1)
    return path


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), box: tuple | None = None) -> bytes:
    """A JPEG of one colour, with an optional white box (x0, y0, x1, y1)."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, colour)
    if box:
        ImageDraw.Draw(image).rectangle(box, fill=(240, 240, 240))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def synthetic_clips(video_id: str, colours: list[tuple[int, int, int]], seconds: float = 14.0,
                    frames: int = 4) -> list[dict]:
    """Clip rows as the frames stage writes them: one colour a clip, a box moving left to right."""
    rows = []
    for index, colour in enumerate(colours):
        images = [jpeg(colour, box=(4 + 12 * f, 10, 14 + 12 * f, 20)) for f in range(frames)]
        rows.append({"clip_id": f"{video_id}-{index:05d}", "video_id": video_id, "clip_index": index,
                     "start_s": index * seconds, "end_s": (index + 1) * seconds,
                     "caption_frames": images,
                     "caption_frame_times_s": [index * seconds + f * seconds / frames for f in range(frames)],
                     "train_frames": [], "train_frame_times_s": [],
                     # a cut where the colour changes: each colour is one shot
                     "cuts_s": [index * seconds] if index and colour != colours[index - 1] else [],
                     "brightness": 100.0, "motion": 3.0, "dup_similarity": 0.5})
    return rows
