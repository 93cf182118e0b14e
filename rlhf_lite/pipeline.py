"""The whole of RLHF in one call, with simulated labelers: what ``rlhf-lite pipeline`` runs.

    pretrain the base model -> sample pairs, label them -> train the reward model -> PPO

and then the gold judge's verdict: on held-out prompts, how often the PPO policy's answer beats
the base model's (``gold_win_rate_vs_base``). Writes ``OUT/metrics.json`` (keys below, stable so
that scripts can read them), the plots (``pretrain.png``, ``reward_model.png``, ``ppo.png``), the
labelled pairs (``comparisons.jsonl``, TRL's format), the PPO log (``ppo_history.json``), the
trained models (``reward_model/``, ``policy/``) and PPO's last checkpoint (``checkpoints/``).

metrics.json::

    seconds, stage_seconds: {pretrain, pairs, reward_model, ppo}, device, seed,
    reward_model: {n_train_pairs, heldout_accuracy, gold_agreement, noise_ceiling_accuracy},
    ppo: {episodes, initial_reward, final_reward, initial_gold, final_gold, final_kl,
          gold_win_rate_vs_base}

``initial_*`` are the first PPO batch's means (the base model), ``final_*`` the last batch's;
rewards are the reward model's normalised scores, gold the judge's utility under ``criteria``,
KL in nats per completion.
"""
from __future__ import annotations

import json
import os
import time

import matplotlib.pyplot as plt

from .callbacks import TensorBoardWriter
from .models import get_base_model, pick_device, save_model
from .plots import LivePlot, plot_curves
from .ppo import PLOT_METRICS, PPOConfig, PPOTrainer, gold_win_rate
from .preferences import make_preference_dataset, write_trl_jsonl
from .reward_model import evaluate, split_comparisons, train_reward_model
from .world import SimulatedLabeler, World, get_criteria


def run_pipeline(out, task: str = "trivia", criteria: str = "helpful", seed: int = 0,
                 device: str | None = None, pairs: int = 1000, ppo_steps: int = PPOConfig.steps,
                 cache_dir=None, pretrain_steps: int | None = None, heldout_samples: int = 8,
                 progress: bool = True, tensorboard=None, resume: bool = False) -> dict:
    """Run every stage and write ``out`` (see the module docstring); returns the metrics.

    cache_dir: where the base model is cached (default ``out/runs``); give a shared folder
        (e.g. ``notebooks/runs``) to skip pretraining when that model is there already.
    pretrain_steps: pretraining steps (default: ``get_base_model``'s).
    heldout_samples: samples per held-out prompt in the win-rate comparison.
    tensorboard: a folder for TensorBoard logs of every stage (``callbacks.TensorBoardWriter``).
    resume: go on from PPO's last checkpoint in ``out/checkpoints`` (PPO saves one every 10
        iterations); the stages before PPO run again, seeded, and give the same models.
    """
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    world, crit = World(task, seed), get_criteria(criteria)
    device = str(pick_device(device))
    stage_seconds = {}
    callbacks = [TensorBoardWriter(tensorboard)] if tensorboard else []

    def stage(name, begun):
        stage_seconds[name] = round(time.perf_counter() - begun, 2)

    # --- 1. the base model
    begun = time.perf_counter()
    kwargs = {} if pretrain_steps is None else {"steps": pretrain_steps}
    model, tokenizer, _, losses = get_base_model(world, runs_dir=cache_dir or os.path.join(out, "runs"),
                                                 seed=seed, device=device, **kwargs,
                                                 callbacks=callbacks)
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
                                                  seed=seed, device=device, callbacks=callbacks)
    _, heldout_pairs = split_comparisons(comparisons, seed=seed)   # the split train_reward_model used
    rm_eval = evaluate(reward_model, heldout_pairs, world, labeler) if heldout_pairs else {}
    reward_model.save(os.path.join(out, "reward_model"))
    stage("reward_model", begun)

    # --- 4. PPO against the reward model; the gold judge only watches
    begun = time.perf_counter()
    train_prompts, heldout_prompts = world.split_prompts()
    gold_fn = lambda prompts, texts: world.gold_many(prompts, texts, crit)  # noqa: E731
    config = PPOConfig(steps=ppo_steps, max_new_tokens=world.max_new_tokens, seed=seed)
    trainer = PPOTrainer(model, tokenizer, reward_model, train_prompts, config, gold_fn=gold_fn)
    plot = LivePlot(PLOT_METRICS, title=f"PPO on {task}, {crit.name} labelers", xlabel="episodes")
    history = trainer.train(plot=plot, progress=progress, callbacks=callbacks, resume=resume,
                            checkpoint_dir=os.path.join(out, "checkpoints"))
    win_rate = gold_win_rate(trainer.policy, model, tokenizer, heldout_prompts, gold_fn, heldout_samples,
                             world.max_new_tokens, config.temperature, seed=seed)
    save_model(trainer.policy, tokenizer, os.path.join(out, "policy"))
    stage("ppo", begun)

    # --- write metrics, logs and plots
    for callback in callbacks:
        callback.close()
    first, last = history[0], history[-1]
    metrics = {
        "seconds": round(time.perf_counter() - start, 2),
        "stage_seconds": stage_seconds,
        "device": device,
        "seed": seed,
        "reward_model": {
            "n_train_pairs": rm_history["n_train"],
            "heldout_accuracy": rm_eval.get("accuracy"),
            "gold_agreement": rm_eval.get("gold_agreement"),
            "noise_ceiling_accuracy": rm_eval.get("noise_ceiling_accuracy"),
        },
        "ppo": {
            "episodes": last["episodes"],
            "initial_reward": first["reward"], "final_reward": last["reward"],
            "initial_gold": first["gold"], "final_gold": last["gold"],
            "final_kl": last["kl"],
            "gold_win_rate_vs_base": win_rate,
        },
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(out, "ppo_history.json"), "w") as f:
        json.dump(history, f)
    plot.save(os.path.join(out, "ppo.png"))
    curves = {"pretrain.png": ({"loss": losses or []}, "pretraining"),
              "reward_model.png": ({"train loss": rm_history["train_loss"]}, "reward model: Bradley-Terry loss")}
    for name, (curve, title) in curves.items():
        figure = plot_curves(curve, title=title).figure
        figure.savefig(os.path.join(out, name), dpi=120, bbox_inches="tight")
        plt.close(figure)
    return metrics
