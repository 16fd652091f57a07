"""A tiny real text model with a 512-token context, through the `transformers` engine.

The model (a random 1-layer Llama, max_position_embeddings 512) has a real byte-level
BPE tokenizer trained here on the prompts' and captions' words, so prompts are counted
by the model's own tokenizer and chat template. Its answers are random, so the gates
reject them: what is checked is that every prompt the summary and clue steps send,
plus max_tokens, fits 512 tokens, and that a video too long for one prompt is asked
in rounds.
"""
import os

import pytest

from stages.base import ErrorRow
from stages.clues import FINAL_PROMPT, JUDGE_PROMPT, PROMPTS, CluesStage
from stages.summaries import ANSWER, PROMPTS as SUMMARY_PROMPTS, SummariesStage
from test_context import hour_of_captions
from vico_pipeline.config import Config

CONTEXT = 512
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def _tiny_text_model(path: str) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = list(PROMPTS.values()) + [FINAL_PROMPT, JUDGE_PROMPT, ANSWER] + list(SUMMARY_PROMPTS["v1"].values())
    corpus += [c["caption"] for c in hour_of_captions()] + ["00:14-00:28 [hour-00012] 01:02:03"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus * 3, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    pytest.importorskip("transformers")
    return _tiny_text_model(str(tmp_path_factory.mktemp("small-context") / "model"))


def _recording(stage, seen: list[int]):
    """Every request's prompt tokens as the engine fed them to the model (its attention mask)."""
    generate = stage.engine.generate

    def wrapped(prepared):
        results = generate(prepared)
        seen.extend(r.prompt_tokens for r in results)
        return results
    stage.engine.generate = wrapped


def test_every_prompt_fits_the_models_512_tokens_counted_by_its_tokenizer(small_model):
    config = Config.model_validate({"clues": {
        "engine": "transformers", "model": small_model, "device": "cpu", "max_tokens": 32,
        "context_tokens": 100_000, "batch_size": 8}})  # the model's 512 is the smaller: it wins
    captions = hour_of_captions(40)
    summaries, clues = SummariesStage(config), CluesStage(config)
    summaries.setup()
    clues.setup()
    assert summaries.budget.limit == CONTEXT and "the model's 512" in summaries.budget.describe()
    seen: list[int] = []
    _recording(summaries, seen)
    _recording(clues, seen)
    whole = clues.clue_request(captions, 3)
    assert clues.budget.tokens(whole) > 2 * CONTEXT  # one prompt with every caption would not fit

    summary_rows = list(summaries.process({"video_id": "hour", "source": "s", "caption": captions}))
    asked_for_summaries = len(seen)
    clue_rows = list(clues.process({"video_id": "hour", "source": "s", "caption": captions, "summaries": []}))

    assert asked_for_summaries >= 4 and len(seen) - asked_for_summaries >= 4  # 4 segments; parts of 40 clips
    assert seen and max(seen) + 32 <= CONTEXT and min(seen) > 0
    assert max(seen) == max(summaries.budget.largest, clues.budget.largest)  # our count is the model's count
    # Random text: the gates reject it, and say so; no prompt was refused or cut.
    assert summary_rows and all(isinstance(r, ErrorRow) and r.error_type.startswith("summary_") for r in summary_rows)
    assert {r.error_type for r in summary_rows} <= {"summary_truncated", "summary_unparsed", "summary_repetitive",
                                                    "summary_refusal"}
    assert len(clue_rows) == 1 and clue_rows[0].error_type == "too_few_clues"
    assert "before the final pick" in clue_rows[0].message  # it was asked in rounds, part by part
