"""Training logs, the same for every trainer: one small protocol, TensorBoard and JSON Lines.

Every trainer takes ``callbacks``: ``models.pretrain`` (and ``get_base_model``),
``reward_model.train_reward_model``, ``ppo.PPOTrainer.train`` (and the trainers built on it),
``dpo.train_dpo`` and ``dpo.train_sft``. A callback is any function

    callback(stage, step, metrics)

    stage    the trainer: "pretrain", "reward_model", "ppo", "dpo", "sft", ...
    step     1, 2, ... its steps (PPO: iterations)
    metrics  {name: number}: the step's log entry; nested dicts are flattened ("seconds/update"),
             texts and missing values (None) left out

called after every step, e.g. ``callbacks=[lambda stage, step, m: print(stage, step, m)]``.
Two are ready: ``TensorBoardWriter(log_dir)`` (one chart per metric, named stage/metric; needs the
``tensorboard`` package) and ``JSONLinesWriter(path)`` (a line a step: {"stage", "step",
**metrics}). Each step is also logged on the standard ``logging`` logger ``rlhf_lite``, at DEBUG
level: ``logging.basicConfig(level=logging.DEBUG)`` shows every step of every trainer.
"""
from __future__ import annotations

import json
import logging
import math
import os

from . import parallel

logger = logging.getLogger("rlhf_lite")


def scalars(metrics: dict, prefix: str = "") -> dict:
    """The numbers of a log entry, nested dicts flattened with "/"; texts and None left out."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def log_step(callbacks, stage: str, step: int, metrics: dict) -> None:
    """Send one step's numbers to the ``rlhf_lite`` logger and to every callback; in a
    data-parallel run (``parallel``) from process 0 only, so that one process writes."""
    if not parallel.is_main_process():
        return
    values = scalars(metrics)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s step %d: %s", stage, step,
                     ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    for callback in callbacks or ():
        callback(stage, step, values)


class TensorBoardWriter:
    """A callback that writes every metric as a TensorBoard scalar, ``stage/metric`` against the
    step: ``tensorboard --logdir DIR`` shows them as they train. ``close()`` when done."""

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoardWriter needs the tensorboard package: "
                              "pip install tensorboard") from None
        self.log_dir = os.fspath(log_dir)
        self.writer = SummaryWriter(self.log_dir, flush_secs=10)

    def __call__(self, stage: str, step: int, metrics: dict) -> None:
        for name, value in metrics.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"{stage}/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


class JSONLinesWriter:
    """A callback that appends a line a step to ``path``: {"stage", "step", **metrics}, flushed,
    so that another program can follow it (``pandas.read_json(path, lines=True)`` reads it)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")

    def __call__(self, stage: str, step: int, metrics: dict) -> None:
        finite = {k: v if math.isfinite(v) else None for k, v in metrics.items()}  # NaN: null
        self.file.write(json.dumps({"stage": stage, "step": step, **finite}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
