"""The whole of RLHF in one call, with simulated labelers: what ``rlhf-lite pipeline`` runs.

    pretrain the base model -> sample pairs, label them -> train the reward model -> RL

where RL is PPO, RLOO or GRPO (``method``, ``critic_free.METHODS``), and then the gold judge's
verdict: on held-out prompts, how often the RL policy's answer beats the base model's
(``gold_win_rate_vs_base``, with its 95% interval). Writes ``OUT/metrics.json`` (keys below,
stable so that scripts can read them), the plots (``pretrain.png``, ``reward_model.png``,
``<method>.png``), the labelled pairs (``comparisons.jsonl``, TRL's format), the RL log
(``<method>_history.json``), and the trained models (``reward_model/``, ``policy/``).

metrics.json::

    seconds, stage_seconds: {pretrain, pairs, reward_model, rl, ppo (with --method ppo)},
    device, seed, method,
    reward_model: {n_train_pairs, heldout_accuracy, gold_agreement, noise_ceiling_accuracy},
    rl (any method) and ppo (with --method ppo, the same values):
        {episodes, initial_reward, final_reward, initial_gold, final_gold, final_kl,
         gold_win_rate_vs_base, gold_win_rate_vs_base_ci95}

``initial_*`` are the first RL batch's means (the base model), ``final_*`` the last batch's;
rewards are the reward model's normalised scores, gold the judge's utility under ``criteria``,
KL in nats per completion.
"""
from __future__ import annotations

import json
import os
import time

import matplotlib.pyplot as plt

from .models import get_base_model, pick_device, save_model
from .plots import LivePlot, plot_curves
from . import critic_free
from .ppo import PLOT_METRICS, gold_win_rate
from .preferences import make_preference_dataset, write_trl_jsonl
from .reward_model import evaluate, split_comparisons, train_reward_model
from .world import SimulatedLabeler, World, get_criteria


def rl_stage(method, model, tokenizer, reward_model, world, criteria, steps=None, seed=0,
             heldout_samples: int = 8, progress: bool = True):
    """Stage 4: train ``method`` ("ppo", "rloo" or "grpo") with its default config against the
    reward model on the training prompts, the gold judge only watching; then its gold win rate
    against the base model on the held-out prompts. Returns (trainer, plot, win rate)."""
    trainer_class = critic_free.METHODS[method]
    train_prompts, heldout_prompts = world.split_prompts()
    gold_fn = lambda prompts, texts: world.gold_many(prompts, texts, criteria)  # noqa: E731
    config = trainer_class.config_class(max_new_tokens=world.max_new_tokens, seed=seed,
                                        **({"steps": steps} if steps else {}))
    trainer = trainer_class(model, tokenizer, reward_model, train_prompts, config, gold_fn=gold_fn)
    metrics = PLOT_METRICS if method == "ppo" else critic_free.PLOT_METRICS
    plot = LivePlot(metrics, title=f"{trainer.name} on {world.task.name}, {criteria} labelers",
                    xlabel="episodes")
    trainer.train(plot=plot, progress=progress)
    win_rate = gold_win_rate(trainer.policy, model, tokenizer, heldout_prompts, gold_fn,
                             heldout_samples, world.max_new_tokens, config.temperature, seed=seed)
    return trainer, plot, win_rate


def run_pipeline(out, task: str = "trivia", criteria: str = "helpful", seed: int = 0,
                 device: str | None = None, pairs: int = 1000, ppo_steps: int | None = None,
                 cache_dir=None, pretrain_steps: int | None = None, heldout_samples: int = 8,
                 progress: bool = True, method: str = "ppo") -> dict:
    """Run every stage and write ``out`` (see the module docstring); returns the metrics.

    method: the RL stage, "ppo", "rloo" or "grpo"; ppo_steps: its iterations (default: the
        method's config).

    cache_dir: where the base model is cached (default ``out/runs``); give a shared folder
        (e.g. ``notebooks/runs``) to skip pretraining when that model is there already.
    pretrain_steps: pretraining steps (default: ``get_base_model``'s).
    heldout_samples: samples per held-out prompt in the win-rate comparison.
    """
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    world, crit = World(task, seed), get_criteria(criteria)
    device = str(pick_device(device))
    stage_seconds = {}

    def stage(name, begun):
        stage_seconds[name] = round(time.perf_counter() - begun, 2)

    # --- 1. the base model
    begun = time.perf_counter()
    kwargs = {} if pretrain_steps is None else {"steps": pretrain_steps}
    model, tokenizer, _, losses = get_base_model(world, runs_dir=cache_dir or os.path.join(out, "runs"),
                                                 seed=seed, device=device, **kwargs)
    stage("pretrain", begun)

    # --- 2. preference pairs, labelled by a simulated labeler
    begun = time.perf_counter()
    labeler = SimulatedLabeler(world, crit, seed=seed)
    comparisons = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=pairs, seed=seed)
    write_trl_jsonl(comparisons, os.path.join(out, "comparisons.jsonl"))
    stage("pairs", begun)

    # --- 3. the reward model
    begun = time.perf_counter()
    reward_model, rm_history = train_reward_model(model, tokenizer, comparisons, max_new_tokens=world.max_new_tokens,
                                                  seed=seed, device=device)
    _, heldout_pairs = split_comparisons(comparisons, seed=seed)   # the split train_reward_model used
    rm_eval = evaluate(reward_model, heldout_pairs, world, labeler) if heldout_pairs else {}
    reward_model.save(os.path.join(out, "reward_model"))
    stage("reward_model", begun)

    # --- 4. RL against the reward model; the gold judge only watches
    if method not in critic_free.METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(critic_free.METHODS)}")
    begun = time.perf_counter()
    trainer, plot, win_rate = rl_stage(method, model, tokenizer, reward_model, world, crit,
                                       ppo_steps, seed, heldout_samples, progress)
    history = trainer.history
    save_model(trainer.policy, tokenizer, os.path.join(out, "policy"))
    stage("rl", begun)
    if method == "ppo":
        stage_seconds["ppo"] = stage_seconds["rl"]

    # --- write metrics, logs and plots
    first, last = history[0], history[-1]
    metrics = {
        "seconds": round(time.perf_counter() - start, 2),
        "stage_seconds": stage_seconds,
        "device": device,
        "seed": seed,
        "method": method,
        "reward_model": {
            "n_train_pairs": rm_history["n_train"],
            "heldout_accuracy": rm_eval.get("accuracy"),
            "gold_agreement": rm_eval.get("gold_agreement"),
            "noise_ceiling_accuracy": rm_eval.get("noise_ceiling_accuracy"),
        },
        "rl": {
            "episodes": last["episodes"],
            "initial_reward": first["reward"], "final_reward": last["reward"],
            "initial_gold": first["gold"], "final_gold": last["gold"],
            "final_kl": last["kl"],
            "gold_win_rate_vs_base": float(win_rate),
            "gold_win_rate_vs_base_ci95": win_rate.ci95,
        },
    }
    if method == "ppo":
        metrics["ppo"] = dict(metrics["rl"])
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(out, f"{method}_history.json"), "w") as f:
        json.dump(history, f)
    plot.save(os.path.join(out, f"{method}.png"))
    curves = {"pretrain.png": ({"loss": losses or []}, "pretraining"),
              "reward_model.png": ({"train loss": rm_history["train_loss"]}, "reward model: Bradley-Terry loss")}
    for name, (curve, title) in curves.items():
        figure = plot_curves(curve, title=title).figure
        figure.savefig(os.path.join(out, name), dpi=120, bbox_inches="tight")
        plt.close(figure)
    return metrics
