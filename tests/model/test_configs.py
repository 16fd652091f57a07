"""configs/train-tiny.yaml and eval-tiny.yaml validate, and config.py needs no torch."""

import subprocess
import sys
from pathlib import Path

import yaml

from vico_pipeline.model.config import EvalConfig, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_configs_validate():
    for name in ("train-tiny.yaml", "eval-tiny.yaml"):
        raw = yaml.safe_load((ROOT / "configs" / name).read_text())
        assert set(raw) == {"model", "train", "eval"}
        ModelConfig(**raw["model"]), TrainConfig(**raw["train"]), EvalConfig(**raw["eval"])
    raw = yaml.safe_load((ROOT / "configs" / "train-7b.yaml").read_text())
    train = TrainConfig(**raw["train"])
    assert ModelConfig(**raw["model"]).llm_path and (train.strategy, train.workers, train.use_gpu) == ("fsdp", 8, True)
    stages = [yaml.safe_load((ROOT / "configs" / f"train-stage{n}.yaml").read_text()) for n in (1, 2)]
    assert stages[0]["model"] == stages[1]["model"]  # stage 2 loads stage 1's weights
    one, two = (TrainConfig(**s["train"]) for s in stages)
    assert one.freeze == ["vision", "llm"] and two.freeze == [] and two.init_from == one.output


def test_defaults_and_no_torch_import():
    ModelConfig(), TrainConfig(), EvalConfig()
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import vico_pipeline.model.config, vico_pipeline.model.cli")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_train_defaults_are_the_safe_ones_and_the_tiny_demo_config_opts_in():
    train = TrainConfig()
    assert (train.pack_questions, train.allow_stand_in_data, train.resume) == (False, False, False)
    tiny = TrainConfig(**yaml.safe_load((ROOT / "configs" / "train-tiny.yaml").read_text())["train"])
    assert tiny.allow_stand_in_data and not tiny.pack_questions  # the demo's data comes from describe / template
