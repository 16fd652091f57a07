"""Entry points the `vico` CLI calls: `vico train CONFIG` and `vico eval CONFIG`.

`config` is the root config object with `.model`, `.train` and `.eval` sections. A user's
mistake raises `ModelUserError`, which the CLI prints as one line.
"""

from __future__ import annotations


def train_main(config) -> int:
    from .train import run_training

    out = run_training(config.model, config.train)
    print(out)
    return 0


def eval_main(config) -> int:
    from .evaluate import run_eval

    train = getattr(config, "train", None)
    out = run_eval(config.eval, getattr(train, "data", None), getattr(train, "max_frames", 128))
    print(out)
    return 0
