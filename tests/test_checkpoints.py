"""PPO checkpoints: a run stopped and resumed ends exactly where the same run without a stop
ends; ``rlhf-lite pipeline --resume`` goes on from the last checkpoint, ``--tensorboard`` logs."""
import json
import shutil

import pytest
import torch

from conftest import RUNS
from rlhf_lite.cli import main
from rlhf_lite.models import build_tokenizer, make_base_model
from rlhf_lite.ppo import PPOConfig, PPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = dict(steps=5, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=6, seed=3)


@pytest.fixture(scope="module")
def policy(world):
    tokenizer = build_tokenizer(world)
    return make_base_model(tokenizer, seed=1), tokenizer


def trainer(world, policy, **config):
    """A fresh trainer, as a new process would build it: same model, reward and prompts."""
    model, tokenizer = policy
    reward = lambda prompts, texts: [len(t) - 3 * t.count("the") for t in texts]  # noqa: E731
    return PPOTrainer(model, tokenizer, reward, world.prompts[:20],
                      PPOConfig(**{**CONFIG, **config}))


class Stop(Exception):
    pass


def stop_after(iteration):
    def callback(stage, step, metrics):
        if step == iteration:
            raise Stop   # a crash, a Ctrl-C, a closed laptop
    return callback


def without_timings(history):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def test_a_stopped_and_resumed_run_ends_equal_to_an_uninterrupted_one(world, policy, tmp_path):
    straight = trainer(world, policy)
    straight.train(progress=False)
    stopped = trainer(world, policy)
    with pytest.raises(Stop):
        stopped.train(progress=False, checkpoint_dir=tmp_path, checkpoint_every=2,
                      callbacks=[stop_after(3)])                  # the checkpoint is iteration 2
    shutil.copy(tmp_path / "ppo_checkpoint.pt", tmp_path / "at_2.pt")
    resumed = trainer(world, policy)
    resumed.train(progress=False, checkpoint_dir=tmp_path, resume=True)
    assert resumed.iteration == straight.iteration == 5
    assert without_timings(resumed.history) == without_timings(straight.history)
    for ours, theirs in ((resumed.policy, straight.policy),
                         (resumed.value_model, straight.value_model)):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    assert resumed.kl_controller.value == straight.kl_controller.value
    assert straight.history[-1]["kl"] != 0                       # the runs did move the policy
    # without the checkpoint's random states, the run would have gone elsewhere
    fresh = trainer(world, policy)
    fresh.load_checkpoint(tmp_path / "at_2.pt")
    fresh.rng.seed(0)
    fresh.train(steps=1, progress=False)
    assert fresh.iteration == 3
    assert without_timings(fresh.history[:2]) == without_timings(straight.history[:2])
    # other prompts, so other samples (the mean reward alone can come out equal by chance)
    assert fresh.history[2]["samples"] != straight.history[2]["samples"]


def test_a_checkpoint_refuses_other_settings(world, policy, tmp_path):
    first = trainer(world, policy, steps=1)
    first.train(progress=False, checkpoint_dir=tmp_path)
    other = trainer(world, policy, learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"other PPO settings \(learning_rate=0.0005\)"):
        other.train(progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        other.train(resume=True)


def test_pipeline_resume_and_tensorboard(base, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, tb = tmp_path / "run", tmp_path / "tb"
    argv = ["pipeline", "--out", str(out), "--cache-dir", str(RUNS), "--pairs", "60",
            "--seed", "0", "--device", "cpu", "--threads", "1", "--tensorboard", str(tb)]
    assert main(argv + ["--ppo-steps", "2"]) == 0
    first = json.loads((out / "ppo_history.json").read_text())
    assert (out / "checkpoints" / "ppo_checkpoint.pt").is_file()
    events = EventAccumulator(str(tb))
    events.Reload()
    assert {"reward_model/loss", "ppo/reward",
            "ppo/kl"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("ppo/reward")] == [1, 2]
    assert main(argv + ["--ppo-steps", "3", "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "ppo_history.json").read_text())
    assert metrics["ppo"]["episodes"] == 3 * 64 and len(history) == 3
    assert without_timings(history[:2]) == without_timings(first)   # iterations 1-2 not redone
