"""Data-parallel runs through accelerate: two CPU processes (gloo) take the step that one
process takes on the same global batch, and a launched pipeline writes one folder."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, RUNS
from data_parallel_worker import EPISODES, first_updates
from rlhf_lite import parallel
from rlhf_lite.critic_free import GRPOConfig, GRPOTrainer
from rlhf_lite.ppo import PPOConfig, PPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def launch(args, cwd, timeout=300):
    """``torchrun --standalone --nproc_per_node 2 ARGS`` in ``cwd``: exit code, stdout, stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return run.returncode, run.stdout, run.stderr


def test_one_process_leaves_everything_as_it_is():
    assert parallel.processes() == 1 and parallel.is_main_process()
    assert parallel.share(list(range(5))) == list(range(5))
    x = torch.tensor([1.0, 2.0])
    assert parallel.total(x) is x and parallel.average(x) is x
    assert parallel.per_process(torch.tensor(0.0)) == 1       # a mean over nothing stays 0
    assert parallel.per_process(torch.tensor(7.0)) == 7
    assert [m.tolist() for m in parallel.minibatches(torch.arange(5), 2)] == [[0, 1], [2, 3], [4]]
    model = torch.nn.Linear(2, 1)
    assert parallel.data_parallel(model) is model
    entry = {"loss": 0.5, "samples": ["a"]}
    assert parallel.average_numbers(entry) is entry


@pytest.mark.parametrize("processes", [2, 3])
def test_each_process_gets_its_share_of_every_minibatch(monkeypatch, processes):
    monkeypatch.setenv("WORLD_SIZE", str(processes))
    shares, batches = [], []
    for rank in range(processes):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(parallel.share(list(range(10))))
        batches.append([m.tolist() for m in parallel.minibatches(torch.arange(10), 4)])
    assert sum(shares, []) == list(range(10))                      # all of it, once, in order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    # minibatches [0..3], [4..7], [8, 9]: with 3 processes the last (2 < 3) joins the one before
    expected = ([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] if processes == 2
                else [[0, 1, 2, 3], list(range(4, 10))])
    for step, minibatch in enumerate(expected):
        assert sum((batches[rank][step] for rank in range(processes)), []) == minibatch
        assert all(batches[rank][step] for rank in range(processes))   # nobody goes without


def test_batches_that_do_not_split_over_the_processes_are_refused(monkeypatch, world, base):
    """Checked before any process group is joined: every process needs an equal share, and
    RLOO's and GRPO's groups of completions of one prompt stay in one process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    model, tokenizer = base
    reward = lambda prompts, texts: [0.0] * len(texts)  # noqa: E731
    with pytest.raises(ValueError, match=r"PPOConfig: batch_size \(63\) must be a multiple of 2"):
        PPOTrainer(model, tokenizer, reward, world.prompts, PPOConfig(batch_size=63))
    config = GRPOConfig(batch_size=8, minibatch_size=8, samples_per_prompt=8)
    with pytest.raises(ValueError, match="must be a multiple of 16 .*8 completions a prompt"):
        GRPOTrainer(model, tokenizer, reward, world.prompts, config)


def test_two_processes_take_the_step_one_process_takes(base, tmp_path):
    """Same global batches: the reward model's losses, PPO's, RLOO's and GRPO's losses and
    statistics (token means over both shares, advantages whitened over both, GRPO's mean per
    completion) and the weights after the updates (gradients averaged by DDP) match one
    process's, each process having sampled half."""
    code, _, err = launch([str(REPO / "tests" / "data_parallel_worker.py"), str(RUNS),
                           str(tmp_path / "two.pt")], tmp_path)
    assert code == 0, err[-4000:]
    two, one = torch.load(tmp_path / "two.pt"), first_updates(str(RUNS))
    assert (two["processes"], one["processes"]) == (2, 1)
    assert (two["episodes_sampled_here"], one["episodes_sampled_here"]) == (EPISODES // 2, EPISODES)
    assert two["reward_model_losses"] == pytest.approx(one["reward_model_losses"], rel=1e-4,
                                                       abs=1e-6)
    for method in ("ppo", "rloo", "grpo"):
        for key, value in one[method].items():
            assert two[method][key] == pytest.approx(value, rel=1e-3, abs=1e-5), (method, key)
    for key in ("reward_model_step", "policy_step", "rloo_policy_step", "grpo_policy_step"):
        # Adam divides each gradient by its own size: float noise in a near-zero gradient moves
        # its weight by up to lr, so the steps agree to ~0.1%, not to float precision. Without
        # gradient averaging (each process stepping on its half) they differ by ~100%.
        difference = float((two[key] - one[key]).norm() / one[key].norm())
        assert one[key].norm() > 0 and difference < 0.01, (key, difference)


def test_pipeline_with_two_processes_writes_one_folder(base, tmp_path):
    code, out, err = launch(["-m", "rlhf_lite", "pipeline", "--out", "run", "--cache-dir",
                             str(RUNS), "--pairs", "40", "--ppo-steps", "1", "--device", "cpu"],
                            tmp_path)
    assert code == 0, err[-4000:]
    assert os.listdir(tmp_path) == ["run"]
    metrics = json.loads(out)                           # printed once: by process 0 only
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["ppo"]["episodes"] == 64
    assert err.count("wrote run/metrics.json") == 1
    assert sorted(os.listdir(tmp_path / "run")) == sorted([
        "checkpoints", "comparisons.jsonl", "metrics.json", "policy", "ppo.png",
        "ppo_history.json", "pretrain.png", "reward_model", "reward_model.png"])
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["ppo_checkpoint.pt"]


def test_grpo_on_your_labels_with_two_processes_writes_once(world, base, tmp_path):
    """--method grpo and --labels under torchrun: each process fits the same taste and trains
    on process 0's pairs; one folder, one checkpoint and one TensorBoard log are written."""
    pytest.importorskip("tensorboard")
    from rlhf_lite.preferences import draw_pairs, simulate_comparisons, write_trl_jsonl
    from rlhf_lite.world import SimulatedLabeler
    mine = simulate_comparisons(SimulatedLabeler(world, "concise", seed=3),
                                draw_pairs(world, *base, n_pairs=8, seed=3))
    write_trl_jsonl(mine, tmp_path / "mine.jsonl")
    work = tmp_path / "work"
    work.mkdir()
    code, out, err = launch(["-m", "rlhf_lite", "pipeline", "--out", "run", "--cache-dir",
                             str(RUNS), "--pairs", "24", "--ppo-steps", "1", "--device", "cpu",
                             "--method", "grpo", "--labels", str(tmp_path / "mine.jsonl"),
                             "--tensorboard", "tb"], work)
    assert code == 0, err[-4000:]
    assert sorted(os.listdir(work)) == ["run", "tb"] and len(os.listdir(work / "tb")) == 1
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["method"] == "grpo"
    assert metrics["rl"]["episodes"] == 64 and metrics["labels"]["yours"] == 8
    assert os.listdir(work / "run" / "checkpoints") == ["ppo_checkpoint.pt"]
    assert out.count("are yours") == 1 and out.count('"processes": 2') == 1   # printed once
