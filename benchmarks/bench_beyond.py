"""What best-of-n, DPO and SFT cost on the same 1,000 labelled pairs, and what they gain by gold.

    python benchmarks/bench_beyond.py [--pairs 1000] [--pool 256] [--threads 1]

Makes the pairs (simulated `helpful` labeler) from the default base model, trains one reward model,
then times: sampling a best-of-n pool on the held-out questions and its over-optimisation curve,
DPO and SFT with their defaults, and best-of-16 at answer time. Reports the gold win-rate against
the base model and the KL of each (the PPO benchmark is benchmarks/bench_ppo.py).
"""
import argparse
import os
import time

import torch

from rlhf_lite.beyond import (best_of_n_curve, compare_methods, fit_gao, format_table,
                              sample_candidates)
from rlhf_lite.dpo import train_dpo, train_sft
from rlhf_lite.models import get_base_model, pick_device
from rlhf_lite.preferences import make_preference_dataset
from rlhf_lite.reward_model import train_reward_model
from rlhf_lite.world import SimulatedLabeler, World

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--task", default="trivia", choices=["trivia", "summaries"])
parser.add_argument("--pairs", type=int, default=1000)
parser.add_argument("--pool", type=int, default=256,
                    help="samples a held-out question for the best-of-n curve")
parser.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is fastest on a busy shared CPU, "
                         "where threads wait on each other")
parser.add_argument("--runs",
                    default=os.path.join(os.path.dirname(__file__), "..", "notebooks", "runs"))
parser.add_argument("--device", default=None)
args = parser.parse_args()
torch.set_num_threads(args.threads)

world = World(args.task, seed=0)
model, tokenizer, _, _ = get_base_model(world, runs_dir=args.runs, device=args.device)
heldout = world.split_prompts()[1]
pairs = make_preference_dataset(world, model, tokenizer, SimulatedLabeler(world, "helpful", seed=0),
                                n_pairs=args.pairs, seed=0)
seconds = {}
start = time.perf_counter()
reward_model, _ = train_reward_model(model, tokenizer, pairs, device=args.device,
                                     max_new_tokens=world.max_new_tokens)
seconds["reward model"] = time.perf_counter() - start

start = time.perf_counter()
pool = sample_candidates(model, tokenizer, heldout, args.pool, world.max_new_tokens, seed=1)
seconds["pool"] = time.perf_counter() - start
start = time.perf_counter()
ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if n <= args.pool]
curve = best_of_n_curve(heldout, pool, reward_model, world.gold_many, ns)
fit = fit_gao(curve["d"], [g - curve["gold"][0] for g in curve["gold"]], "bon")
seconds["curve"] = time.perf_counter() - start

policies = {}
for name, train in (("DPO", train_dpo), ("SFT", train_sft)):
    start = time.perf_counter()
    policies[name], _ = train(model, tokenizer, pairs, device=args.device)
    seconds[name] = time.perf_counter() - start

rows = compare_methods(world, model, tokenizer, heldout, policies=policies,
                       best_of={"best-of-16": (reward_model, 16)},
                       train_seconds={"DPO": seconds["DPO"], "SFT": seconds["SFT"],
                                      "best-of-16": seconds["reward model"]})

print(f"device: {pick_device(args.device)}, threads: {torch.get_num_threads()}, "
      f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, cores: {os.cpu_count()}")
print(f"reward model on {args.pairs} pairs: {seconds['reward model']:.1f} s")
print(f"best-of-n pool, {len(heldout)} questions x {args.pool}: {seconds['pool']:.1f} s sampling, "
      f"{seconds['curve']:.1f} s scoring and the curve")
peak = max(range(len(ns)), key=lambda k: curve["gold"][k])
print(f"gold by n: {' '.join(f'{n}:{g:.2f}' for n, g in zip(ns, curve['gold']))}; "
      f"peak at n={ns[peak]}, fit d({fit.alpha:.2f} - {fit.beta:.2f} d), peak d={fit.peak_d:.2f}")
print(format_table(rows))
