"""The learning-rate schedule: linear warmup, then cosine (to ``optim.min_lr_ratio``), noam or constant.

``lr_lambda(config, total_steps)(step)`` is the factor applied to ``optim.lr`` at optimizer step
``step`` (``torch.optim.lr_scheduler.LambdaLR``). On ``--resume`` the factor is recomputed from the
config's total steps, so a run resumed with another ``train.max_steps`` follows the new length.
"""

from __future__ import annotations

import math

from asr_kd.train.config import TrainConfig


def lr_lambda(config: TrainConfig, total_steps: int):
    o = config.optim

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "noam":
            return math.sqrt(max(o.warmup_steps, 1) / max(step + 1, 1))
        progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
