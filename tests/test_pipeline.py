"""The headless pipeline: ``rlhf-lite pipeline`` on a tiny budget, and its argument checks."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import RUNS, tiny_llama
from rlhf_lite.cli import main
from rlhf_lite.models import PRESETS, build_tokenizer, make_base_model, pretrain, save_model
from rlhf_lite.ppo import PPOConfig
from rlhf_lite.preferences import simulate_comparisons, write_trl_jsonl
from rlhf_lite.reward_model import train_reward_model
from rlhf_lite.world import SimulatedLabeler

RL_KEYS = {"episodes", "initial_reward", "final_reward", "initial_gold", "final_gold", "final_kl",
           "gold_win_rate_vs_base", "gold_win_rate_vs_base_ci95", "gold_win_rate_n",
           "gold_win_rate_prompts"}
KEYS = {
    "seconds": None, "device": None, "seed": None, "processes": None, "method": None,
    "stage_seconds": {"pretrain", "pairs", "reward_model", "rl", "ppo"},
    "reward_model": {"n_train_pairs", "n_heldout_pairs", "heldout_accuracy",
                     "heldout_accuracy_ci95", "gold_agreement", "gold_utility_accuracy",
                     "noise_ceiling_accuracy"},
    "rl": RL_KEYS,
    "ppo": RL_KEYS,
}


def corpus_pairs(world, n: int = 8) -> list[tuple[str, str, str]]:
    """``n`` (prompt, answer, other answer) pairs from the world's corpus, for labels of "your"
    own without sampling a model."""
    answers = {}
    for prompt, answer, _ in world.corpus(400, seed=5):
        answers.setdefault(prompt, set()).add(answer)
    return [(p, *sorted(a)[:2]) for p, a in answers.items() if len(a) > 1][:n]


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
    assert metrics["device"] == "cpu" and metrics["seed"] == 0 and metrics["processes"] == 1
    rm, ppo = metrics["reward_model"], metrics["ppo"]
    assert rm["n_train_pairs"] == 60                 # all of them: judged on fresh pairs instead
    assert rm["n_heldout_pairs"] >= 900              # of 1,000 fresh pairs, those with a preference
    low, high = rm["heldout_accuracy_ci95"]
    assert low < rm["heldout_accuracy"] < high and high - low < 0.07
    low, high = ppo["gold_win_rate_vs_base_ci95"]
    assert low < ppo["gold_win_rate_vs_base"] < high
    assert ppo["gold_win_rate_n"] == 16 * ppo["gold_win_rate_prompts"]
    assert metrics["ppo"]["episodes"] == 2 * 64
    assert 0.0 <= metrics["reward_model"]["heldout_accuracy"] <= 1.0
    assert -1.0 < metrics["ppo"]["final_kl"] < 5.0  # one batch's k1 estimate: near 0 after 2 steps
    assert metrics["ppo"]["initial_gold"] is not None
    assert metrics["method"] == "ppo" and metrics["ppo"] == metrics["rl"]
    low, high = metrics["ppo"]["gold_win_rate_vs_base_ci95"]
    assert low <= metrics["ppo"]["gold_win_rate_vs_base"] <= high
    stages = {k: v for k, v in metrics["stage_seconds"].items() if k != "ppo"}   # ppo = rl
    assert metrics["stage_seconds"]["ppo"] == stages["rl"]
    assert metrics["seconds"] >= sum(stages.values()) - 0.1
    for name in ("pretrain.png", "reward_model.png", "ppo.png", "comparisons.jsonl",
                 "ppo_history.json", "reward_model/normalization.json", "policy/config.json"):
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
    (["--task", "poetry"],
     "argument --task: invalid choice: 'poetry' (choose from 'summaries', 'trivia')"),
    (["--criteria", "kind"], "argument --criteria: invalid choice: 'kind'"),
    (["--pairs", "0"], "argument --pairs: expected a positive whole number, got 0"),
    (["--ppo-steps", "ten"], "argument --ppo-steps: expected a positive whole number, got 'ten'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--threads", "-1"], "argument --threads: expected a positive whole number, got -1"),
    (["--device", "gpu"], "argument --device: unknown device 'gpu'; use 'cpu', 'cuda' or 'cuda:N'"),
    (["--method", "dpo"],
     "argument --method: invalid choice: 'dpo' (choose from 'ppo', 'rloo', 'grpo')"),
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
    assert ("rlhf-lite pipeline: error: argument --pairs: "
            "expected a positive whole number, got -5" in run.stderr)


def save_tiny_llama(world, path, context=128, pad=True, eos=True):
    """A Llama of your own, saved with its tokenizer (ours, here), optionally without a pad or
    an eos token or with a short context."""
    tokenizer = build_tokenizer(world)
    model = tiny_llama(tokenizer, context=context)
    if not pad:
        tokenizer.pad_token = None
    if not eos:
        tokenizer.eos_token = None
    save_model(model, tokenizer, path)
    return path


def test_pipeline_on_your_own_model(world, tmp_path, caplog):
    """--model DIR: a Llama whose tokenizer has no pad token (as many causal LMs ship) runs every
    stage without pretraining; the pad used instead is said."""
    llama = save_tiny_llama(world, tmp_path / "llama", pad=False)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="rlhf_lite"):
        assert main(["pipeline", "--out", str(out), "--model", str(llama), "--pairs", "40",
                     "--ppo-steps", "1", "--device", "cpu"]) == 0
    assert "has no pad token: padding with its eos token '<eos>'" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reward_model"]["n_train_pairs"] == 40 and metrics["ppo"]["episodes"] == 64
    assert not (out / "runs").exists()                                  # nothing pretrained
    for folder in ("policy", "reward_model"):
        assert json.loads((out / folder / "config.json").read_text())["model_type"] == "llama"


def test_your_own_model_with_a_preset_a_method_your_labels_and_resume(world, tmp_path):
    """--model with --preset small, --method grpo, --labels and --resume together: the RL stage
    trains at the preset's learning rate, your labels count, and the resumed run goes on from
    the first run's checkpoint instead of starting again."""
    llama = save_tiny_llama(world, tmp_path / "llama")
    mine = simulate_comparisons(SimulatedLabeler(world, "concise", seed=3),   # labelled by "you"
                                corpus_pairs(world))
    write_trl_jsonl(mine, tmp_path / "mine.jsonl")
    out = tmp_path / "run"
    argv = ["pipeline", "--out", str(out), "--model", str(llama), "--preset", "small",
            "--method", "grpo", "--labels", str(tmp_path / "mine.jsonl"), "--pairs", "24",
            "--device", "cpu"]
    assert main(argv + ["--ppo-steps", "1"]) == 0
    first = json.loads((out / "grpo_history.json").read_text())
    checkpoint = torch.load(out / "checkpoints" / "ppo_checkpoint.pt", weights_only=True)
    rate = checkpoint["config"]["learning_rate"]
    assert rate == PRESETS["small"].rl_lr != PPOConfig.learning_rate
    assert main(argv + ["--ppo-steps", "2", "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "grpo" and "ppo" not in metrics
    assert metrics["rl"]["episodes"] == 2 * 64 and metrics["labels"]["yours"] == len(mine)
    history = json.loads((out / "grpo_history.json").read_text())
    timeless = lambda entries: [{k: v for k, v in e.items() if k != "seconds"}  # noqa: E731
                                for e in entries]
    assert len(history) == 2 and timeless(history[:1]) == timeless(first)   # not done again
    assert json.loads((out / "policy" / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("problem, message", [
    ("not a model", "argument --model: '{dir}' is not a model directory (no config.json in it)"),
    ("no weights", "argument --model: '{dir}' holds no causal language model transformers"),
    ("no tokenizer", "argument --model: no tokenizer could be loaded from '{dir}'"),
    ("no eos", "argument --model: the tokenizer in '{dir}' has no eos token"),
    ("short context", "argument --model: '{dir}' reads at most 16 tokens "
                      "(config.max_position_embeddings), but the longest prompt is"),
])
def test_a_model_that_cannot_run_gets_a_clear_error(world, tmp_path, capsys, problem, message):
    folder = tmp_path / "model"
    if problem == "not a model":
        folder.mkdir()
        (folder / "weights.bin").write_text("")
    elif problem == "no weights":
        save_tiny_llama(world, folder)
        (folder / "model.safetensors").unlink()
    elif problem == "no tokenizer":
        tiny_llama(build_tokenizer(world)).save_pretrained(folder)
    else:
        save_tiny_llama(world, folder, context=16 if problem == "short context" else 128,
                        eos=problem != "no eos")
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "--out", str(tmp_path / "run"), "--model", str(folder),
              "--device", "cpu"])
    assert exit_.value.code == 2
    assert message.format(dir=folder) in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_pretrain_steps_and_a_model_of_your_own_do_not_mix(world, tmp_path, capsys):
    llama = save_tiny_llama(world, tmp_path / "llama")
    with pytest.raises(SystemExit):
        main(["pipeline", "--out", str(tmp_path), "--model", str(llama), "--pretrain-steps", "5"])
    assert "--pretrain-steps has no effect with --model" in capsys.readouterr().err


def test_progress_false_draws_no_bars(world, base, capsys):
    """``run_pipeline(progress=False)`` passes it on: pretraining and the reward model stay
    quiet too, not only the RL stage."""
    model, tokenizer = base
    pretrain(make_base_model(tokenizer), tokenizer, world, steps=2, corpus_size=64,
             progress=False)
    labelled = simulate_comparisons(SimulatedLabeler(world, "helpful", seed=0), corpus_pairs(world))
    train_reward_model(model, tokenizer, labelled, heldout=0.0, epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    train_reward_model(model, tokenizer, labelled, heldout=0.0, epochs=1)
    assert "reward model" in capsys.readouterr().err            # the bar, when it is asked for
