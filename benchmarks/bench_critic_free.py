"""PPO, RLOO and GRPO side by side: the pipeline's RL stage for each, one after the other.

    python benchmarks/bench_critic_free.py [--methods ppo rloo grpo] [--seed 0] [--threads 1]
                                           [--runs-dir notebooks/runs] [--steps N]

The same base model, the same 1,000 labelled pairs and the same reward model as
``rlhf-lite pipeline`` with defaults, then ``pipeline.rl_stage`` for each method with its
default config: RL wall seconds (training and the held-out win-rate evaluation, as the
pipeline's ``stage_seconds.rl``), the ratio to PPO's, and ``gold_win_rate_vs_base`` with its 95%
interval. The issue's targets: RLOO and GRPO >= 0.85, in no more RL wall time than PPO. On a
shared machine wall seconds move with the load; the ratio in one run is what counts, so the
load average is printed before and after.
"""
import argparse
import os
import time

import torch

from rlhf_lite.models import get_base_model
from rlhf_lite.pipeline import rl_stage
from rlhf_lite.preferences import make_preference_dataset
from rlhf_lite.reward_model import train_reward_model
from rlhf_lite.world import SimulatedLabeler, World

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--methods", nargs="+", default=["ppo", "rloo", "grpo"],
                    choices=["ppo", "rloo", "grpo"])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--pairs", type=int, default=1000)
parser.add_argument("--steps", type=int, default=None,
                    help="RL iterations (default: each method's)")
parser.add_argument("--runs-dir", default="runs", help="where the base model is cached")
parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


world, criteria = World("trivia", args.seed), "helpful"
model, tokenizer, _, _ = get_base_model(world, runs_dir=args.runs_dir, seed=args.seed)
labeler = SimulatedLabeler(world, criteria, seed=args.seed)
comparisons = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=args.pairs,
                                      seed=args.seed)
reward_model, _ = train_reward_model(model, tokenizer, comparisons, seed=args.seed,
                                     max_new_tokens=world.max_new_tokens)
print(f"threads {torch.get_num_threads()}, {load()}")

rows = []
for method in args.methods:
    begun = time.perf_counter()
    trainer, _, win_rate = rl_stage(method, model, tokenizer, reward_model, world, criteria,
                                    args.steps, args.seed)
    seconds = time.perf_counter() - begun
    phases = {k: sum(h["seconds"][k] for h in trainer.history)
              for k in ("generation", "scoring", "update")}
    rows.append((method, seconds, phases, trainer.history[-1], win_rate))
    print(f"{method} done, {load()}", flush=True)

ppo_seconds = next((s for m, s, *_ in rows if m == "ppo"), None)
print(f"\n{'method':<7}{'RL s':>7}{'vs PPO':>8}   training s: generation scoring update"
      f"{'episodes':>10}{'KL':>6}  gold_win_rate_vs_base [95% CI]")
for method, seconds, phases, last, win_rate in rows:
    ratio = f"{seconds / ppo_seconds:.2f}" if ppo_seconds else "-"
    print(f"{method:<7}{seconds:>7.1f}{ratio:>8}{'':>14}{phases['generation']:>11.1f}"
          f"{phases['scoring']:>8.1f}{phases['update']:>7.1f}{last['episodes']:>10}"
          f"{last['kl']:>6.2f}"
          f"  {win_rate.value:.3f} [{win_rate.low:.3f}, {win_rate.high:.3f}] "
          f"(n={win_rate.n}, {win_rate.groups} prompts)")
