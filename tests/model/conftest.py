"""Shared tiny fixtures for the Video-XL model tests."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _tiny_model_config(**kw):
    from vico_pipeline.model.config import ModelConfig

    base = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                rope_theta=10000.0, image_size=56, patch_size=14, vision_hidden_size=32, vision_layers=2,
                vision_heads=2, vision_intermediate_size=64, window_tokens=8, ratios=[2, 4], ratio=4)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_model_config():
    """A factory: tiny_model_config(**overrides) -> ModelConfig (hidden 32, 2 layers, 4 tokens a frame)."""
    return _tiny_model_config
