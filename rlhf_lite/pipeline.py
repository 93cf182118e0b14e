"""The whole of RLHF in one call, with simulated labelers: what ``rlhf-lite pipeline`` runs.

    pretrain the base model -> sample pairs, label them -> train the reward model -> RL

where RL is PPO, RLOO or GRPO (``method``, ``critic_free.METHODS``), and then the gold judge's
verdict: on held-out prompts, how often the RL policy's answer beats the base model's
(``gold_win_rate_vs_base``, with its 95% interval). Writes ``OUT/metrics.json`` (keys below,
stable so that scripts can read them), the plots (``pretrain.png``, ``reward_model.png``,
``<method>.png``), the labelled pairs (``comparisons.jsonl``, TRL's format), the RL log
(``<method>_history.json``), the trained models (``reward_model/``, ``policy/``) and the RL
stage's last checkpoint (``checkpoints/``).

metrics.json::

    seconds, stage_seconds: {pretrain, pairs, reward_model, rl, ppo (with --method ppo)},
    device, seed, processes, method,
    reward_model: {n_train_pairs, n_heldout_pairs, heldout_accuracy, heldout_accuracy_ci95,
                   gold_agreement, gold_utility_accuracy, noise_ceiling_accuracy},
    rl (any method) and ppo (with --method ppo, the same values):
        {episodes, initial_reward, final_reward, initial_gold, final_gold, final_kl,
         gold_win_rate_vs_base, gold_win_rate_vs_base_ci95, gold_win_rate_n,
         gold_win_rate_prompts}

With ``labels`` (a learner's labels), your taste is fitted to them and a stand-in with that
taste labels the rest of the pairs (``taste.training_labels``); gold is then the judge under
your taste, and metrics.json gains ``labels: {yours, stand_in, taste: {feature: weight},
taste_fitted}``.

``initial_*`` are the first RL batch's means (the base model), ``final_*`` the last batch's;
rewards are the reward model's normalised scores, gold the judge's utility under ``criteria``,
KL in nats per completion. The reward model is judged on ``n_heldout_pairs`` fresh pairs whose
prompts ask facts no training prompt asks, labelled by the same labeler; ``*_ci95`` are 95%
intervals (Wilson for the accuracy; the bootstrap over the held-out prompts for the win rate,
from ``gold_win_rate_n`` pairs on ``gold_win_rate_prompts`` prompts); ``gold_utility_accuracy``
is the gold utility's own accuracy on those labels, next to the expected noise ceiling.
``processes``: how many processes shared the work (``parallel``).

The base model is a preset's (``models.PRESETS``: tiny, small, gpu), pretrained with its
settings, or a Hugging Face causal LM of your own (``model_dir``, not pretrained); the reward
model and the RL stage take their learning rates from the preset.
"""
from __future__ import annotations

import json
import os
import time

import matplotlib.pyplot as plt

from . import critic_free, parallel
from .callbacks import TensorBoardWriter
from .models import (PRESETS, check_context, get_base_model, load_model, pick_device, preset_for,
                     save_model)
from .plots import LivePlot, plot_curves
from .ppo import PLOT_METRICS, gold_win_rate
from .preferences import draw_pairs, make_preference_dataset, write_trl_jsonl
from .reward_model import evaluate, train_reward_model
from .taste import training_labels
from .world import SimulatedLabeler, World, get_criteria


def rl_stage(method, model, tokenizer, reward_model, world, criteria, steps=None, seed=0,
             heldout_samples: int = 16, progress: bool = True, callbacks=(),
             checkpoint_dir=None, resume: bool = False, learning_rate: float | None = None):
    """Stage 4: train ``method`` ("ppo", "rloo" or "grpo") with its default config against the
    reward model on the training prompts, the gold judge only watching; then its gold win rate
    against the base model on the held-out prompts. Returns (trainer, plot, win rate).
    ``learning_rate``: the config's (default: the method's). In a data-parallel run every
    process trains its share; only process 0 plots and measures the win rate (the others
    return None for both)."""
    trainer_class = critic_free.METHODS[method]
    train_prompts, heldout_prompts = world.split_prompts()
    gold_fn = lambda prompts, texts: world.gold_many(prompts, texts, criteria)  # noqa: E731
    config = trainer_class.config_class(max_new_tokens=world.max_new_tokens, seed=seed,
                                        **({"steps": steps} if steps else {}),
                                        **({"learning_rate": learning_rate} if learning_rate
                                           else {}))
    trainer = trainer_class(model, tokenizer, reward_model, train_prompts, config, gold_fn=gold_fn)
    main = parallel.is_main_process()
    metrics = PLOT_METRICS if method == "ppo" else critic_free.PLOT_METRICS
    plot = LivePlot(metrics, title=f"{trainer.name} on {world.task.name}, "
                    f"{get_criteria(criteria).name} labelers", xlabel="episodes") if main else None
    trainer.train(plot=plot, progress=progress, callbacks=callbacks,
                  checkpoint_dir=checkpoint_dir, resume=resume)
    if not main:                 # the policy is the same in every process: process 0 reports it
        return trainer, None, None
    win_rate = gold_win_rate(trainer.policy, model, tokenizer, heldout_prompts, gold_fn,
                             heldout_samples, world.max_new_tokens, config.temperature, seed=seed)
    return trainer, plot, win_rate


def run_pipeline(out, task: str = "trivia", criteria: str | None = None, seed: int = 0,
                 device: str | None = None, pairs: int = 1000, ppo_steps: int | None = None,
                 cache_dir=None, pretrain_steps: int | None = None, heldout_samples: int = 16,
                 heldout_pairs: int = 1000, progress: bool = True, labels=None, tensorboard=None,
                 resume: bool = False, method: str = "ppo", preset: str | None = None,
                 model_dir=None) -> dict | None:
    """Run every stage and write ``out`` (see the module docstring); returns the metrics (in a
    data-parallel run: process 0 does; the others return None).

    method: the RL stage, "ppo", "rloo" or "grpo"; ppo_steps: its iterations (default: the
        method's config).

    cache_dir: where the base model is cached (default ``out/runs``); give a shared folder
        (e.g. ``notebooks/runs``) to skip pretraining when that model is there already.
    pretrain_steps: pretraining steps (default: ``get_base_model``'s).
    heldout_samples: samples per held-out prompt in the win-rate comparison.
    progress: progress bars for pretraining, the reward model and the RL stage (False: none).
    preset: the base model's size and training settings (default tiny); with ``model_dir``,
        only the settings (default: the preset nearest the model's width, ``preset_for``).
    model_dir: a local Hugging Face causal LM directory with its tokenizer, used as the base
        model instead of pretraining one (``load_model``; errors say what is missing).
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
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if method not in critic_free.METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(critic_free.METHODS)}")
    main = parallel.is_main_process()        # the process that writes (the only one, usually)
    if main:
        os.makedirs(out, exist_ok=True)
    world, crit = World(task, seed), get_criteria(criteria or "helpful")
    device = str(pick_device(device))
    parallel.start(device)
    stage_seconds = {}
    callbacks = [TensorBoardWriter(tensorboard)] if tensorboard and main else []

    def stage(name, begun):
        stage_seconds[name] = round(time.perf_counter() - begun, 2)

    # --- 1. the base model
    begun = time.perf_counter()
    with parallel.main_process_first():     # process 0 pretrains and caches, the others load
        if model_dir is None:
            model, tokenizer, _, losses = get_base_model(
                world, runs_dir=cache_dir or os.path.join(out, "runs"), preset=preset or "tiny",
                steps=pretrain_steps, seed=seed, device=device, callbacks=callbacks,
                progress=progress)
        else:
            (model, tokenizer), losses = load_model(model_dir, device), None
    check_context(model, tokenizer, world.prompts, world.max_new_tokens,
                  repr(os.fspath(model_dir)) if model_dir else "the base model")
    settings = PRESETS[preset or preset_for(model)]
    stage("pretrain", begun)

    # --- 2. preference pairs, labelled by a simulated labeler (or yours, and a stand-in's)
    begun = time.perf_counter()
    labeler = SimulatedLabeler(world, crit, seed=seed)
    if labels is None:
        comparisons = parallel.from_main(make_preference_dataset(
            world, model, tokenizer, labeler, n_pairs=pairs, seed=seed) if main else None)
    else:                        # every process fits the same taste; process 0's pairs are used
        drawn = draw_pairs(world, model, tokenizer, pairs, seed=seed, distinct=False)
        yours = training_labels(labels, world, drawn, preset=criteria, seed=seed)
        labeler, crit = yours.labeler, yours.labeler.criteria
        comparisons = parallel.from_main(yours.comparisons)
        if progress and main:
            print(yours)
    if main:
        write_trl_jsonl(comparisons, os.path.join(out, "comparisons.jsonl"))
    stage("pairs", begun)

    # --- 3. the reward model, judged on fresh pairs that ask facts no training pair asks
    begun = time.perf_counter()
    reward_model, rm_history = train_reward_model(
        model, tokenizer, comparisons, heldout=0.0, max_new_tokens=world.max_new_tokens,
        lr=settings.reward_model_lr, gate_lr=settings.reward_model_gate_lr, seed=seed,
        device=device, callbacks=callbacks, progress=progress)
    if main:                     # the reward model is the same in every process
        train_prompts, heldout_prompts = world.split_prompts()
        fresh_pairs = make_preference_dataset(world, model, tokenizer, labeler, heldout_pairs,
                                              prompts=heldout_prompts, seed=seed + 1)
        rm_eval = evaluate(reward_model, fresh_pairs, world, labeler)
        reward_model.save(os.path.join(out, "reward_model"))
    stage("reward_model", begun)

    # --- 4. RL against the reward model; the gold judge only watches
    begun = time.perf_counter()
    trainer, plot, win_rate = rl_stage(method, model, tokenizer, reward_model, world, crit,
                                       ppo_steps, seed, heldout_samples, progress, callbacks,
                                       os.path.join(out, "checkpoints"), resume,
                                       learning_rate=settings.rl_lr)
    if not main:
        return None
    history = trainer.history
    save_model(trainer.policy, tokenizer, os.path.join(out, "policy"))
    stage("rl", begun)
    if method == "ppo":
        stage_seconds["ppo"] = stage_seconds["rl"]

    # --- write metrics, logs and plots
    for callback in callbacks:
        callback.close()
    first, last = history[0], history[-1]
    metrics = {
        "seconds": round(time.perf_counter() - start, 2),
        "stage_seconds": stage_seconds,
        "device": device,
        "seed": seed,
        "processes": parallel.processes(),
        "method": method,
        "reward_model": {
            "n_train_pairs": rm_history["n_train"],
            "n_heldout_pairs": rm_eval["accuracy"].n,
            "heldout_accuracy": rm_eval["accuracy"].value,
            "heldout_accuracy_ci95": rm_eval["accuracy"].ci95,
            "gold_agreement": rm_eval["gold_agreement"],
            "gold_utility_accuracy": rm_eval["gold_accuracy"].value,
            "noise_ceiling_accuracy": rm_eval["noise_ceiling_accuracy"],
        },
        "rl": {
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
    if method == "ppo":
        metrics["ppo"] = dict(metrics["rl"])
    if labels is not None:
        metrics["labels"] = yours.metrics()
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(out, f"{method}_history.json"), "w") as f:
        json.dump(history, f)
    plot.save(os.path.join(out, f"{method}.png"))
    curves = {"pretrain.png": ({"loss": losses or []}, "pretraining"),
              "reward_model.png": ({"train loss": rm_history["train_loss"]},
                                   "reward model: Bradley-Terry loss")}
    for name, (curve, title) in curves.items():
        figure = plot_curves(curve, title=title).figure
        figure.savefig(os.path.join(out, name), dpi=120, bbox_inches="tight")
        plt.close(figure)
    return metrics
