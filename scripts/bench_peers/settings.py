"""The benchmark settings: one configuration, identical for every system, and its peer-unit mapping.

Light on purpose (no torch, no transformers): ``scripts/bench.py`` imports it too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

# Ray started by any system listens on loopback only and reports no usage stats; set before ray loads.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Settings:
    """One benchmark configuration, identical for every system (peers get it in their own units)."""

    trials: int = 12
    seed: int = 0
    concurrency: int = 2  # trials at once
    cpus_per_trial: int = 1  # cores (and torch threads) per trial
    lr: tuple[float, float] = (1e-4, 1e-2)  # log scale
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    epochs: tuple[int, int] = (1, 3)
    dropout: tuple[float, float] = (0.0, 0.2)
    weight_decay: tuple[float, float] = (0.0, 0.1)
    eval_every: float = 0.25  # epochs between evaluations (hpo)
    grace_epochs: float = 0.5  # ASHA grace period in epochs (hpo)
    reduction_factor: float = 2.0
    eval_batch: int = 32  # hpo: largest forward pass (max_micro_batch); peers evaluate in one batch
    n_train: int = 0  # training blocks (filled in from the prepared data)
    n_val: int = 0  # validation blocks
    train_tokens: int = 0  # loss-carrying tokens in one epoch of the training blocks
    block: int = 128
    # the realistic workload (scripts/bench_smollm2.py) sets these; the tiny one keeps the defaults
    workload: str = "tiny"  # tiny | smollm2
    micro_batch: int = 0  # peers: per-device batch, the rest accumulated (0: the whole batch at once)
    peer_eval_batch: int = 0  # peers: evaluation batch (0: every validation block in one batch)
    bf16: bool = False  # peers: TrainingArguments(bf16=True), CPU autocast as hpo's precision auto
    warmup_ratio: float = 0.0  # peers: TrainingArguments(warmup_ratio=...) (HF's default 0)
    keep_checkpoints: int = 0  # peers: checkpoints kept per trial (0: every one, Ray's default)
    peer_units: dict[str, Any] = field(default_factory=dict)

    def searches_dropout(self) -> bool:
        return self.dropout[1] > 0

    def accumulation(self, batch: int) -> int:
        """Micro-batches per optimizer step for the peers at ``batch`` (1 without ``micro_batch``)."""
        return max(1, batch // self.micro_batch) if self.micro_batch else 1

    def steps_per_epoch(self, batch: int) -> int:
        return math.ceil(self.n_train / batch)

    def derive_peer_units(self) -> dict[str, Any]:
        """ASHA and evaluation in the peers' native units (optimizer steps, evaluations).

        The peers count time in optimizer steps: an evaluation every ``eval_steps`` steps, and
        ASHA's ``training_iteration`` (number of evaluations) as its time unit. The mapping is exact
        for the middle batch size: ``eval_steps`` = ``eval_every`` epochs of batch 16; the grace
        period is the same number of evaluations as hpo's; ``max_t`` is the longest possible trial
        (max epochs at the smallest batch) so ASHA never truncates a trial hpo would run in full.
        """
        mid = sorted(self.batch_sizes)[len(self.batch_sizes) // 2]
        eval_steps = max(1, round(self.eval_every * self.steps_per_epoch(mid)))
        grace_iters = max(1, round(self.grace_epochs / self.eval_every))
        longest = self.epochs[1] * self.steps_per_epoch(min(self.batch_sizes))
        self.peer_units = {
            "reference_batch": mid,
            "eval_steps": eval_steps,
            "grace_iters": grace_iters,
            "max_t_iters": math.ceil(longest / eval_steps),
            "pruner_min_resource_steps": grace_iters * eval_steps,
        }
        return self.peer_units

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        d = dict(d)
        for k in ("lr", "batch_sizes", "epochs", "dropout", "weight_decay"):
            d[k] = tuple(d[k])
        return cls(**d)
