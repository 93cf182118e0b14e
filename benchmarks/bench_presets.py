"""Does each preset learn? The whole pipeline per preset, and the figures issue 14 asks for.

    python benchmarks/bench_presets.py [--presets tiny small] [--method ppo] [--threads 1]

For each preset: ``run_pipeline`` with its defaults (1,000 pairs, 40 RL iterations of 64
episodes, the preset's training settings from ``models.PRESETS``), the base model cached in
``--runs`` (so a preset pretrained before is loaded: the pretraining seconds say which). Then:

- pretraining loss: the mean of the last 50 steps' losses (the corpus's floor is ~0.35);
- reward model: accuracy against the labels with its Wilson 95% interval and the noise ceiling
  that the labeler's noise allows, on the pipeline's ``--heldout-pairs`` fresh pairs from
  held-out prompts (facts no training pair asks), and its agreement with gold;
- gold win rate of the RL policy against the base model, with its bootstrap 95% interval.

Timings on a shared machine are noisy: the load average is printed with them.
"""
import argparse
import json
import os
import time

import torch

from rlhf_lite.models import PRESETS
from rlhf_lite.pipeline import run_pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS))
parser.add_argument("--method", default="ppo", choices=("ppo", "rloo", "grpo"))
parser.add_argument("--heldout-pairs", type=int, default=1000)
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


def interval(value: float, ci95) -> str:
    return f"{value:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}]"


print(f"threads {torch.get_num_threads()}, cores {os.cpu_count()}, load average at start {load()}")
for name in args.presets:
    settings = PRESETS[name]
    out = os.path.join(args.out, name)
    start = time.perf_counter()
    metrics = run_pipeline(out, preset=name, cache_dir=args.runs, device=args.device,
                           method=args.method, heldout_pairs=args.heldout_pairs, progress=False)
    seconds = time.perf_counter() - start
    base_dir = os.path.join(args.runs, f"base-trivia-{name}-{settings.pretrain_steps}-seed0")
    with open(os.path.join(base_dir, "loss_history.json")) as f:
        losses = json.load(f)
    rm, rl = metrics["reward_model"], metrics["rl"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["stage_seconds"].items())
    print(f"\n== preset {name}: {settings.n_embd} wide, {settings.n_layer} layers, "
          f"device {metrics['device']}, load average now {load()}")
    cached = metrics["stage_seconds"]["pretrain"] < 30
    print(f"seconds: {seconds:.0f} in all ({stages}); pretraining "
          f"{'cached, not timed here' if cached else 'timed here'}")
    print(f"pretraining: {len(losses)} steps at lr {settings.pretrain_lr:g}, "
          f"mean loss of the last 50: {sum(losses[-50:]) / 50:.4f}")
    print(f"reward model (lr {settings.reward_model_lr:g}, gate {settings.reward_model_gate_lr:g})"
          f", {rm['n_heldout_pairs']} fresh pairs from held-out prompts: accuracy "
          f"{interval(rm['heldout_accuracy'], rm['heldout_accuracy_ci95'])}, ceiling "
          f"{rm['noise_ceiling_accuracy']:.3f}, "
          f"gap {rm['noise_ceiling_accuracy'] - rm['heldout_accuracy']:.3f}, gold agreement "
          f"{rm['gold_agreement']:.3f}")
    print(f"{args.method.upper()} (lr {settings.rl_lr:g}, {rl['episodes']} episodes): gold win "
          f"rate vs base {interval(rl['gold_win_rate_vs_base'], rl['gold_win_rate_vs_base_ci95'])}"
          f" (n={rl['gold_win_rate_n']}, {rl['gold_win_rate_prompts']} prompts), gold "
          f"{rl['initial_gold']:.2f} -> {rl['final_gold']:.2f}, final KL {rl['final_kl']:.2f}")
