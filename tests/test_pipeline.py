"""The headless pipeline: ``rlhf-lite pipeline`` on a tiny budget, and its argument checks."""
import json
import subprocess
import sys

import pytest

from conftest import RUNS
from rlhf_lite.cli import main

RL_KEYS = {"episodes", "initial_reward", "final_reward", "initial_gold", "final_gold", "final_kl",
           "gold_win_rate_vs_base", "gold_win_rate_vs_base_ci95", "gold_win_rate_n",
           "gold_win_rate_prompts"}
KEYS = {
    "seconds": None, "device": None, "seed": None, "method": None,
    "stage_seconds": {"pretrain", "pairs", "reward_model", "rl", "ppo"},
    "reward_model": {"n_train_pairs", "n_heldout_pairs", "heldout_accuracy",
                     "heldout_accuracy_ci95", "gold_agreement", "gold_utility_accuracy",
                     "noise_ceiling_accuracy"},
    "rl": RL_KEYS,
    "ppo": RL_KEYS,
}


def test_pipeline_writes_metrics_plots_and_models(base, tmp_path, capsys):
    out = tmp_path / "run"
    # the base model comes from the session's cache (the `base` fixture made sure it is there)
    assert main(["pipeline", "--out", str(out), "--cache-dir", str(RUNS), "--pairs", "60",
                 "--ppo-steps", "2", "--seed", "0", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(KEYS)
    for key, inner in KEYS.items():
        if inner is not None:
            assert set(metrics[key]) == inner, key
    assert json.loads(capsys.readouterr().out) == metrics          # also printed
    assert metrics["device"] == "cpu" and metrics["seed"] == 0
    rm, ppo = metrics["reward_model"], metrics["ppo"]
    assert rm["n_train_pairs"] == 60                 # all of them: judged on fresh pairs instead
    assert rm["n_heldout_pairs"] >= 900              # of 1,000 fresh pairs, those with a preference
    low, high = rm["heldout_accuracy_ci95"]
    assert low < rm["heldout_accuracy"] < high and high - low < 0.07
    low, high = ppo["gold_win_rate_vs_base_ci95"]
    assert low < ppo["gold_win_rate_vs_base"] < high
    assert ppo["gold_win_rate_n"] == 16 * ppo["gold_win_rate_prompts"]
    assert metrics["ppo"]["episodes"] == 2 * 64
    assert 0.0 <= metrics["ppo"]["gold_win_rate_vs_base"] <= 1.0
    assert 0.0 <= metrics["reward_model"]["heldout_accuracy"] <= 1.0
    assert -1.0 < metrics["ppo"]["final_kl"] < 5.0     # the k1 estimate of one batch: near 0 after 2 steps
    assert metrics["ppo"]["initial_gold"] is not None
    assert metrics["method"] == "ppo" and metrics["ppo"] == metrics["rl"]
    low, high = metrics["ppo"]["gold_win_rate_vs_base_ci95"]
    assert low <= metrics["ppo"]["gold_win_rate_vs_base"] <= high
    stages = {k: v for k, v in metrics["stage_seconds"].items() if k != "ppo"}   # ppo = rl
    assert metrics["stage_seconds"]["ppo"] == stages["rl"]
    assert metrics["seconds"] >= sum(stages.values()) - 0.1
    for name in ("pretrain.png", "reward_model.png", "ppo.png", "comparisons.jsonl", "ppo_history.json",
                 "reward_model/normalization.json", "policy/config.json"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "comparisons.jsonl").read_text().splitlines()) == 60


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_pipeline_with_a_critic_free_method(method, base, tmp_path, capsys):
    out = tmp_path / method
    assert main(["pipeline", "--out", str(out), "--cache-dir", str(RUNS), "--pairs", "60",
                 "--ppo-steps", "2", "--device", "cpu", "--method", method]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(KEYS) - {"ppo"}                      # no ppo block: PPO did not run
    assert set(metrics["stage_seconds"]) == KEYS["stage_seconds"] - {"ppo"}
    assert metrics["method"] == method and set(metrics["rl"]) == RL_KEYS
    assert metrics["rl"]["episodes"] == 2 * 64
    for name in (f"{method}.png", f"{method}_history.json", "policy/config.json"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize("argv, message", [
    (["--task", "poetry"], "argument --task: invalid choice: 'poetry' (choose from 'summaries', 'trivia')"),
    (["--criteria", "kind"], "argument --criteria: invalid choice: 'kind'"),
    (["--pairs", "0"], "argument --pairs: expected a positive whole number, got 0"),
    (["--ppo-steps", "ten"], "argument --ppo-steps: expected a positive whole number, got 'ten'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--threads", "-1"], "argument --threads: expected a positive whole number, got -1"),
    (["--device", "gpu"], "argument --device: unknown device 'gpu'; use 'cpu', 'cuda' or 'cuda:N'"),
    (["--method", "dpo"], "argument --method: invalid choice: 'dpo' (choose from 'ppo', 'rloo', 'grpo')"),
])
def test_bad_arguments_get_a_clear_error(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "--out", str(tmp_path)] + argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_out_is_required(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline"])
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_python_dash_m_entry_point_rejects_bad_arguments(tmp_path):
    run = subprocess.run([sys.executable, "-m", "rlhf_lite", "pipeline", "--out", str(tmp_path),
                          "--pairs", "-5"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr
    assert "rlhf-lite pipeline: error: argument --pairs: expected a positive whole number, got -5" in run.stderr
