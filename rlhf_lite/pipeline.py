"""The whole of RLHF in one call, with simulated labelers: what ``rlhf-lite pipeline`` runs.

    pretrain the base model -> sample pairs, label them -> train the reward model -> PPO

and then the gold judge's verdict: on held-out prompts, how often the PPO policy's answer beats
the base model's (``gold_win_rate_vs_base``). Writes ``OUT/metrics.json`` (keys below, stable so
that scripts can read them), the plots (``pretrain.png``, ``reward_model.png``, ``ppo.png``), the
labelled pairs (``comparisons.jsonl``, TRL's format), the PPO log (``ppo_history.json``), the
trained models (``reward_model/``, ``policy/``) and PPO's last checkpoint (``checkpoints/``).

metrics.json::

    seconds, stage_seconds: {pretrain, pairs, reward_model, ppo}, device, seed,
    reward_model: {n_train_pairs, n_heldout_pairs, heldout_accuracy, heldout_accuracy_ci95,
                   gold_agreement, gold_utility_accuracy, noise_ceiling_accuracy},
    ppo: {episodes, initial_reward, final_reward, initial_gold, final_gold, final_kl,
          gold_win_rate_vs_base, gold_win_rate_vs_base_ci95, gold_win_rate_n,
          gold_win_rate_prompts}

With ``labels`` (a learner's labels), your taste is fitted to them and a stand-in with that
taste labels the rest of the pairs (``taste.training_labels``); gold is then the judge under
your taste, and metrics.json gains ``labels: {yours, stand_in, taste: {feature: weight},
taste_fitted}``.

``initial_*`` are the first PPO batch's means (the base model), ``final_*`` the last batch's;
rewards are the reward model's normalised scores, gold the judge's utility under ``criteria``,
KL in nats per completion. The reward model is judged on ``n_heldout_pairs`` fresh pairs whose
prompts ask facts no training prompt asks, labelled by the same labeler; ``*_ci95`` are 95%
intervals (Wilson for the accuracy; the bootstrap over the held-out prompts for the win rate,
from ``gold_win_rate_n`` pairs on ``gold_win_rate_prompts`` prompts); ``gold_utility_accuracy``
is the gold utility's own accuracy on those labels, next to the expected noise ceiling.
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
from .preferences import draw_pairs, make_preference_dataset, write_trl_jsonl
from .reward_model import evaluate, train_reward_model
from .taste import training_labels
from .world import SimulatedLabeler, World, get_criteria


def run_pipeline(out, task: str = "trivia", criteria: str | None = None, seed: int = 0,
                 device: str | None = None, pairs: int = 1000, ppo_steps: int = PPOConfig.steps,
                 cache_dir=None, pretrain_steps: int | None = None, heldout_samples: int = 16,
                 heldout_pairs: int = 1000, progress: bool = True, labels=None, tensorboard=None,
                 resume: bool = False) -> dict:
    """Run every stage and write ``out`` (see the module docstring); returns the metrics.

    cache_dir: where the base model is cached (default ``out/runs``); give a shared folder
        (e.g. ``notebooks/runs``) to skip pretraining when that model is there already.
    pretrain_steps: pretraining steps (default: ``get_base_model``'s).
    heldout_samples: samples per held-out prompt in the win-rate comparison.
    heldout_pairs: fresh pairs on held-out-fact prompts, labelled by the same labeler, that
        the reward model is judged on (it trains on all ``pairs``).
    criteria: the simulated labelers' preset (default helpful); with ``labels``, the prior of
        your taste (default: the criteria your labels were given under, else helpful).
    labels: a file of your labels: a label-store file, or TRL prompt/chosen/rejected JSON Lines.
    tensorboard: a folder for TensorBoard logs of every stage (``callbacks.TensorBoardWriter``).
    resume: go on from PPO's last checkpoint in ``out/checkpoints`` (PPO saves one every 10
        iterations); the stages before PPO run again, seeded, and give the same models.
    """
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    world, crit = World(task, seed), get_criteria(criteria or "helpful")
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

    # --- 2. preference pairs, labelled by a simulated labeler (or yours, and a stand-in's)
    begun = time.perf_counter()
    labeler = SimulatedLabeler(world, crit, seed=seed)
    if labels is None:
        comparisons = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=pairs,
                                              seed=seed)
    else:
        drawn = draw_pairs(world, model, tokenizer, pairs, seed=seed, distinct=False)
        yours = training_labels(labels, world, drawn, preset=criteria, seed=seed)
        comparisons, labeler, crit = yours.comparisons, yours.labeler, yours.labeler.criteria
        if progress:
            print(yours)
    write_trl_jsonl(comparisons, os.path.join(out, "comparisons.jsonl"))
    stage("pairs", begun)

    # --- 3. the reward model, judged on fresh pairs that ask facts no training pair asks
    begun = time.perf_counter()
    reward_model, rm_history = train_reward_model(model, tokenizer, comparisons, heldout=0.0,
                                                  max_new_tokens=world.max_new_tokens,
                                                  seed=seed, device=device, callbacks=callbacks)
    train_prompts, heldout_prompts = world.split_prompts()
    fresh_pairs = make_preference_dataset(world, model, tokenizer, labeler, heldout_pairs,
                                          prompts=heldout_prompts, seed=seed + 1)
    rm_eval = evaluate(reward_model, fresh_pairs, world, labeler)
    reward_model.save(os.path.join(out, "reward_model"))
    stage("reward_model", begun)

    # --- 4. PPO against the reward model; the gold judge only watches
    begun = time.perf_counter()
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
            "n_heldout_pairs": rm_eval["accuracy"].n,
            "heldout_accuracy": rm_eval["accuracy"].value,
            "heldout_accuracy_ci95": rm_eval["accuracy"].ci95,
            "gold_agreement": rm_eval["gold_agreement"],
            "gold_utility_accuracy": rm_eval["gold_accuracy"].value,
            "noise_ceiling_accuracy": rm_eval["noise_ceiling_accuracy"],
        },
        "ppo": {
            "episodes": last["episodes"],
            "initial_reward": first["reward"], "final_reward": last["reward"],
            "initial_gold": first["gold"], "final_gold": last["gold"],
            "final_kl": last["kl"],
            "gold_win_rate_vs_base": win_rate.value,
            "gold_win_rate_vs_base_ci95": win_rate.ci95,
            "gold_win_rate_n": win_rate.n,
            "gold_win_rate_prompts": win_rate.groups,
        },
    }
    if labels is not None:
        metrics["labels"] = yours.metrics()
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
