"""The learning-rate schedule, and which one a resumed run follows.

A schedule is a pure function of the step, saved with every checkpoint (`schedule.json`), so a
resumed run repeats what an uninterrupted one would have done. Its horizon (`total`, the step
where the rate reaches 0) is `train.schedule_steps`, else `train.max_steps`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .config import ModelUserError, TrainConfig


class Schedule:
    """The learning rate's factor at each step: linear warm-up, then cosine decay to zero at `total`.

    `start`: a fresh schedule (`--new-schedule`) counts its warm-up and cosine from that step.
    `restart` = (step, factor): after a resume that moved the horizon, the factor goes on from the
    value it had at that step and decays to zero at the new total: it never jumps.
    """

    def __init__(self, warmup: int, total: int, restart: tuple[int, float] | None = None, start: int = 0):
        self.warmup, self.total, self.start = warmup, total, start
        self.restart = tuple(restart) if restart else None

    def factor(self, step: int) -> float:
        """The factor for the step that follows `step` finished steps."""
        if self.restart and step >= self.restart[0]:
            begin, value = self.restart
            return value * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - begin) / max(1, self.total - begin))))
        local = step - self.start
        if local < self.warmup:
            return (local + 1) / self.warmup
        progress = (local - self.warmup) / max(1, self.total - self.start - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def continued(self, step: int, total: int) -> "Schedule":
        """This schedule going on from `step` to a new total, without a jump."""
        if step - self.start < self.warmup and not self.restart:
            return Schedule(self.warmup, total, start=self.start)  # the warm-up does not depend on the total
        return Schedule(self.warmup, total, (step, self.factor(step)), self.start)

    def state_dict(self) -> dict:
        return {"warmup": self.warmup, "total": self.total, "restart": list(self.restart) if self.restart else None,
                "start": self.start}

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.state_dict() == other.state_dict()

    @classmethod
    def of(cls, tcfg: TrainConfig) -> "Schedule":
        """A run's own schedule, over train.schedule_steps (else max_steps) from step 0."""
        return cls.fresh(0, tcfg)

    @classmethod
    def fresh(cls, step: int, tcfg: TrainConfig) -> "Schedule":
        """Warm-up and cosine from train.lr over the steps after `step` (`--new-schedule`)."""
        total = tcfg.schedule_steps or tcfg.max_steps
        return cls(max(1, math.ceil(tcfg.warmup_ratio * (total - step))), total, start=step)


def saved_schedule(ckpt: Path) -> Schedule | None:
    """The schedule a checkpoint was trained under (None: written before schedules were saved)."""
    path = ckpt / "schedule.json"
    if path.exists():
        state = json.loads(path.read_text())
    else:  # older checkpoints keep it only in state.pt; mmap reads that without loading the optimizer
        import torch

        state = torch.load(ckpt / "state.pt", weights_only=False, mmap=True).get("schedule")
    return Schedule(**state) if state else None


def resumed_schedule(saved: Schedule | None, step: int, tcfg: TrainConfig, out: Path) -> tuple[Schedule, str]:
    """The schedule a run resumed at `step` follows, and how to say it. A run whose schedule has
    ended never trains on at a rate of 0: it needs `--new-schedule`, else it is refused in one line."""
    target = Schedule.of(tcfg)
    if saved is None or saved == target or saved.total == target.total or step >= tcfg.max_steps:
        return saved or target, "the learning rate goes on along the run's own schedule"
    if tcfg.new_schedule and saved.total < target.total:
        fresh = Schedule.fresh(step, tcfg)
        return fresh, (f"a new schedule: {fresh.warmup} warm-up steps, then cosine from train.lr={tcfg.lr:g} "
                       f"to 0 at step {fresh.total}")
    if step >= saved.total:
        raise ModelUserError(
            f"train.output {out}: its learning-rate schedule ended at step {saved.total} (rate 0 from there), so "
            f"steps {step + 1}-{tcfg.max_steps} would train nothing; add --new-schedule (a fresh warm-up and cosine "
            f"from train.lr), or start runs you mean to extend with train.schedule_steps >= their final max_steps")
    return saved.continued(step, target.total), (f"the learning rate goes on from its step-{step} value and decays "
                                                 f"to 0 at step {target.total}")
