"""The headless pipeline's seconds, stage by stage, and its headline figures with their intervals.

    python benchmarks/bench_pipeline.py [--threads N] [--cache-dir DIR] [--seed 0]

Runs ``rlhf-lite pipeline`` with its defaults into a temporary folder, pretraining included
(unless ``--cache-dir`` holds the base model already), and prints the load average, the total
and per-stage seconds, the reward model's held-out accuracy against its noise ceiling, and the
gold win rate against the base model, each with its 95% interval and the samples behind it.
"""
import argparse
import os
import tempfile
import time

import torch

from rlhf_lite.pipeline import run_pipeline

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's)")
parser.add_argument("--cache-dir", default=None,
                    help="a folder with the base model (default: pretrain it)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

load_before = os.getloadavg()[0]
with tempfile.TemporaryDirectory() as out:
    wall = time.perf_counter()
    metrics = run_pipeline(out, seed=args.seed, cache_dir=args.cache_dir, progress=False)
    wall = time.perf_counter() - wall
rm, ppo = metrics["reward_model"], metrics["ppo"]
print(f"threads: {torch.get_num_threads()}, load average {load_before:.1f} before and "
      f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores")
print(f"pipeline: {metrics['seconds']:.1f} s ({wall:.1f} s wall with imports of the models); "
      + ", ".join(f"{k} {v:.1f} s" for k, v in metrics["stage_seconds"].items()))
print(f"reward model: held-out accuracy {rm['heldout_accuracy']:.3f} "
      f"[{rm['heldout_accuracy_ci95'][0]:.3f}, {rm['heldout_accuracy_ci95'][1]:.3f}] on "
      f"{rm['n_heldout_pairs']} fresh held-out-fact pairs; noise ceiling "
      f"{rm['noise_ceiling_accuracy']:.3f}; gold utility on the same labels "
      f"{rm['gold_utility_accuracy']:.3f}")
print(f"PPO: gold win rate vs base {ppo['gold_win_rate_vs_base']:.3f} "
      f"[{ppo['gold_win_rate_vs_base_ci95'][0]:.3f}, {ppo['gold_win_rate_vs_base_ci95'][1]:.3f}] "
      f"({ppo['gold_win_rate_n']} pairs on {ppo['gold_win_rate_prompts']} held-out prompts); "
      f"final KL {ppo['final_kl']:.2f} nats")
