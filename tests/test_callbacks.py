"""Logs: every trainer calls its callbacks after each step, with numbers only; the TensorBoard
and JSON Lines writers record them; the ``rlhf_lite`` logger sees them at DEBUG level."""
import json
import logging
import math

import pytest

from rlhf_lite.callbacks import JSONLinesWriter, TensorBoardWriter, log_step, scalars
from rlhf_lite.dpo import train_dpo, train_sft
from rlhf_lite.models import build_tokenizer, make_base_model, pretrain
from rlhf_lite.ppo import PPOConfig, PPOTrainer
from rlhf_lite.preferences import Comparison
from rlhf_lite.reward_model import train_reward_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, stage, step, metrics):
        self.calls.append((stage, step, metrics))

    def steps(self, stage):
        return [step for s, step, _ in self.calls if s == stage]


@pytest.fixture(scope="module")
def tiny(world):
    """An untrained tiny model and some comparisons: the real trainers on a tiny budget."""
    tokenizer = build_tokenizer(world)
    rows = world.corpus(40, seed=3)
    comparisons = [Comparison(p, a, b) for (p, a, _), (_, b, _) in zip(rows[::2], rows[1::2])]
    return make_base_model(tokenizer), tokenizer, comparisons


def test_every_trainer_calls_its_callbacks_after_each_step(world, tiny):
    model, tokenizer, comparisons = tiny
    record = Recorder()
    assert len(pretrain(make_base_model(tokenizer), tokenizer, world, steps=3, batch_size=8,
                        corpus_size=200, callbacks=[record])) == 3
    train_reward_model(model, tokenizer, comparisons, heldout=0.2, epochs=2, batch_size=8,
                       max_new_tokens=4, callbacks=[record])
    trainer = PPOTrainer(model, tokenizer, lambda p, c: [len(t) for t in c], world.prompts[:8],
                         PPOConfig(steps=2, batch_size=8, minibatch_size=8, ppo_epochs=1,
                                   max_new_tokens=4))
    trainer.train(progress=False, callbacks=[record])
    train_dpo(model, tokenizer, comparisons, epochs=1, batch_size=10, callbacks=[record])
    train_sft(model, tokenizer, comparisons, epochs=1, batch_size=10, callbacks=[record])
    assert record.steps("pretrain") == [1, 2, 3]
    assert record.steps("reward_model") == [1, 2, 2, 3, 4, 4]   # steps, then held-out, each epoch
    assert record.steps("ppo") == [1, 2] and record.steps("dpo") == record.steps("sft") == [1, 2]
    for stage, step, metrics in record.calls:
        assert metrics and all(isinstance(v, (int, float)) for v in metrics.values()), stage
    names = {stage: set(m) for stage, _, m in record.calls}
    assert {"loss", "learning_rate"} <= names["pretrain"]
    assert {"heldout_loss", "heldout_accuracy"} <= names["reward_model"]
    assert {"reward", "kl", "clipfrac", "seconds/update"} <= names["ppo"]
    assert "samples" not in names["ppo"] and "gold" not in names["ppo"]   # texts, None: left out
    assert {"loss", "accuracy", "margin"} <= names["dpo"] and names["sft"] == {"loss"}


def test_scalars_flatten_and_keep_numbers_only():
    assert scalars({"a": 1, "b": {"c": 2.5, "d": "text"}, "e": None, "f": True, "g": [1]}) == \
        {"a": 1, "b/c": 2.5}


def test_the_logger_sees_each_step_at_debug_level(caplog):
    with caplog.at_level(logging.DEBUG, logger="rlhf_lite"):
        log_step([], "ppo", 3, {"reward": 0.25, "seconds": {"update": 0.5}})
    assert caplog.records[0].name == "rlhf_lite"
    assert caplog.records[0].getMessage() == "ppo step 3: reward 0.25, seconds/update 0.5"


def test_json_lines_writer(tmp_path):
    writer = JSONLinesWriter(tmp_path / "logs" / "metrics.jsonl")
    log_step([writer], "dpo", 1, {"loss": 0.7, "margin": float("nan")})
    log_step([writer], "dpo", 2, {"loss": 0.6, "margin": 0.1})
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"stage": "dpo", "step": 1, "loss": 0.7, "margin": None}
    assert json.loads(lines[1])["step"] == 2                 # flushed at each step
    writer.close()


def test_tensorboard_writer(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    writer = TensorBoardWriter(tmp_path / "tb")
    for step in (1, 2, 3):
        log_step([writer], "ppo", step, {"reward": step / 10, "kl": math.inf})
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == ["ppo/reward"]        # inf is not drawn
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("ppo/reward")] == \
        [(1, 0.1), (2, 0.2), (3, 0.3)]
