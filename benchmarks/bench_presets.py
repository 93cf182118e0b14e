"""Does each preset learn? The whole pipeline per preset, and the figures issue 14 asks for.

    python benchmarks/bench_presets.py [--presets tiny small] [--heldout-pairs 2000] [--threads 1]

For each preset: ``run_pipeline`` with its defaults (1,000 pairs, 40 PPO iterations of 64
episodes, the preset's training settings from ``models.PRESETS``), the base model cached in
``--runs`` (so a preset pretrained before is loaded: the pretraining seconds say which). Then:

- pretraining loss: the mean of the last 50 steps' losses (the corpus's floor is ~0.35);
- reward model: accuracy against the labels with its Wilson 95% interval and the noise ceiling
  that the labeler's noise allows, on the pipeline's 100 held-out pairs and on
  ``--heldout-pairs`` fresh pairs from held-out prompts (a second labeler of the same taste);
- gold win rate of the PPO policy against the base model, with its bootstrap 95% interval.

Timings on a shared machine are noisy: the load average is printed with them.
"""
import argparse
import json
import os
import time

import torch

from rlhf_lite.models import PRESETS, load_model
from rlhf_lite.pipeline import run_pipeline
from rlhf_lite.preferences import make_preference_dataset, read_trl_jsonl
from rlhf_lite.reward_model import RewardModel, evaluate, split_comparisons
from rlhf_lite.stats import wilson_interval
from rlhf_lite.world import SimulatedLabeler, World

HERE = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS))
parser.add_argument("--heldout-pairs", type=int, default=2000)
parser.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is fastest on a busy shared CPU")
parser.add_argument("--runs", default=os.path.join(HERE, "..", "notebooks", "runs"),
                    help="cache of the base models (default: the lessons')")
parser.add_argument("--out", default=os.path.join(HERE, "..", "runs", "bench_presets"))
parser.add_argument("--device", default=None)
args = parser.parse_args()
torch.set_num_threads(args.threads)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def with_interval(accuracy: float, n: int) -> str:
    low, high = wilson_interval(accuracy * n, n)
    return f"{accuracy:.3f} [{low:.3f}, {high:.3f}] (n={n})"


world = World("trivia", seed=0)
labeler = SimulatedLabeler(world, "helpful", seed=0)
print(f"threads {torch.get_num_threads()}, cores {os.cpu_count()}, load average at start {load()}")
for name in args.presets:
    settings = PRESETS[name]
    out = os.path.join(args.out, name)
    start = time.perf_counter()
    metrics = run_pipeline(out, preset=name, cache_dir=args.runs, device=args.device,
                           progress=False)
    seconds = time.perf_counter() - start
    base_dir = os.path.join(args.runs, f"base-trivia-{name}-{settings.pretrain_steps}-seed0")
    with open(os.path.join(base_dir, "loss_history.json")) as f:
        losses = json.load(f)
    # the reward model on fresh pairs from held-out prompts, sampled from this preset's base model
    base, tokenizer = load_model(base_dir, args.device)
    second_labeler = SimulatedLabeler(world, "helpful", seed=1)
    fresh = make_preference_dataset(world, base, tokenizer, second_labeler, seed=1,
                                    n_pairs=args.heldout_pairs, prompts=world.split_prompts()[1])
    fresh_eval = evaluate(RewardModel.load(os.path.join(out, "reward_model"), args.device), fresh,
                          world, labeler)
    counted = sum(not (c.tie or c.both_bad) for c in fresh)
    rm, ppo = metrics["reward_model"], metrics["ppo"]
    # simulated labelers never tie, so the exported pairs are the pipeline's, in its order
    n_small = len(split_comparisons(read_trl_jsonl(os.path.join(out, "comparisons.jsonl")))[1])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["stage_seconds"].items())
    print(f"\n== preset {name}: {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters, "
          f"device {metrics['device']}, load average now {load()}")
    cached = metrics["stage_seconds"]["pretrain"] < 30
    print(f"seconds: {seconds:.0f} in all ({stages}); pretraining "
          f"{'cached, not timed here' if cached else 'timed here'}")
    print(f"pretraining: {len(losses)} steps at lr {settings.pretrain_lr:g}, "
          f"mean loss of the last 50: {sum(losses[-50:]) / 50:.4f}")
    print(f"reward model (lr {settings.reward_model_lr:g}), pipeline's held-out pairs: accuracy "
          f"{with_interval(rm['heldout_accuracy'], n_small)}, ceiling "
          f"{rm['noise_ceiling_accuracy']:.3f}, "
          f"gap {rm['noise_ceiling_accuracy'] - rm['heldout_accuracy']:.3f}")
    print(f"reward model, {args.heldout_pairs} fresh pairs from held-out prompts: accuracy "
          f"{with_interval(fresh_eval['accuracy'], counted)}, ceiling "
          f"{fresh_eval['noise_ceiling_accuracy']:.3f}, gap "
          f"{fresh_eval['noise_ceiling_accuracy'] - fresh_eval['accuracy']:.3f}, gold agreement "
          f"{fresh_eval['gold_agreement']:.3f}")
    low, high = ppo["gold_win_rate_vs_base_ci95"]
    print(f"PPO (lr {settings.ppo_lr:g}, {ppo['episodes']} episodes): gold win rate vs base "
          f"{ppo['gold_win_rate_vs_base']:.3f} [{low:.3f}, {high:.3f}], gold "
          f"{ppo['initial_gold']:.2f} -> {ppo['final_gold']:.2f}, final KL {ppo['final_kl']:.2f}")
