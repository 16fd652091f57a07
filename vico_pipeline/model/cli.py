"""Entry points the `vico` CLI calls: `vico train CONFIG` (`--plan`) and `vico eval CONFIG`.

`config` is the root config object with `.model`, `.train` and `.eval` sections. A user's
mistake raises `ModelUserError`, which the CLI prints as one line. The output folder is checked
first, so a path that cannot be written is one line before any model is built.
"""

from __future__ import annotations

import json
import sys


def check_output(folder: str, key: str) -> None:
    from vico_pipeline import storage

    from .config import ModelUserError

    reason = storage.unwritable(folder)
    if reason:
        raise ModelUserError(f"{key} is not writable: {folder} ({reason})")


def train_main(config) -> int:
    check_output(config.train.output, "train.output")
    from .train import run_training

    out = run_training(config.model, config.train)
    print(out)
    return 0


def plan_main(config, as_json: bool = False) -> int:
    """`vico train CONFIG --plan`: the memory plan, as a table (or one JSON object)."""
    import json

    from .plan import memory_plan, plan_table

    plan = memory_plan(config.model, config.train)
    print(json.dumps(plan) if as_json else plan_table(plan))
    return 0


def eval_main(config) -> int:
    """Prints a line per needle cell while it runs (stderr), the results as tables at the end
    (stderr), then the output folder (stdout, last)."""
    check_output(config.eval.output, "eval.output")
    from .eval_table import CellPrinter, results_table
    from .evaluate import run_eval

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    train = getattr(config, "train", None)
    out = run_eval(config.eval, getattr(train, "data", None), getattr(train, "max_frames", 128),
                   on_cells=CellPrinter(config.eval.needle_trials, say))
    say("")
    say(results_table(json.loads((out / "results.json").read_text())))
    print(out)
    return 0
