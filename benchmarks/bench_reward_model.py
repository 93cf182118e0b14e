"""How long training the reward model on 1,000 labelled pairs takes, and how good it is.

    python benchmarks/bench_reward_model.py [--pairs 1000] [--heldout-pairs 2000] [--threads 1] [--shortfall]

Makes the pairs (simulated `helpful` labeler, temperature 1) from the default base model, trains
with the defaults of ``train_reward_model`` (the time includes tokenising, the held-out check
every epoch and the normalisation on base-model samples), then reports accuracy against the
labels, agreement with gold and the noise ceiling on pairs from held-out prompts. ``--shortfall``
also splits the gap to the ceiling by the styles of the two answers (``shortfall_by_style``).
"""
import argparse
import os
import time

import torch

from rlhf_lite.models import get_base_model, pick_device
from rlhf_lite.preferences import make_preference_dataset
from rlhf_lite.reward_model import evaluate, pair_rewards, shortfall_by_style, train_reward_model
from rlhf_lite.world import SimulatedLabeler, World

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--task", default="trivia", choices=["trivia", "summaries"])
parser.add_argument("--pairs", type=int, default=1000)
parser.add_argument("--heldout-pairs", type=int, default=2000)
parser.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is fastest on a busy shared CPU, where threads wait on each other")
parser.add_argument("--runs", default=os.path.join(os.path.dirname(__file__), "..", "notebooks", "runs"))
parser.add_argument("--device", default=None)
parser.add_argument("--shortfall", action="store_true", help="where the accuracy falls short of the ceiling")
args = parser.parse_args()
torch.set_num_threads(args.threads)

world = World(args.task, seed=0)
model, tokenizer, _, _ = get_base_model(world, runs_dir=args.runs, device=args.device)
labeler = SimulatedLabeler(world, "helpful", temperature=1.0, seed=0)
start = time.perf_counter()
pairs = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=args.pairs, seed=0)
heldout = make_preference_dataset(world, model, tokenizer, SimulatedLabeler(world, "helpful", seed=1),
                                  n_pairs=args.heldout_pairs, prompts=world.split_prompts()[1], seed=1)
pair_seconds = time.perf_counter() - start

start = time.perf_counter()
reward_model, history = train_reward_model(model, tokenizer, pairs, device=args.device,
                                           max_new_tokens=world.max_new_tokens)
train_seconds = time.perf_counter() - start
result = evaluate(reward_model, heldout, world, labeler)

print(f"device: {pick_device(args.device)}, threads: {torch.get_num_threads()}, "
      f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, cores: {os.cpu_count()}")
print(f"making {args.pairs} + {args.heldout_pairs} held-out pairs: {pair_seconds:.1f} s")
print(f"training on {args.pairs} pairs ({history['n_train']} train, {history['n_heldout']} held out, "
      f"{len(history['epoch'])} epochs): {train_seconds:.1f} s")
print(f"held-out split accuracy by epoch: {[round(a, 3) for a in history['heldout_accuracy']]}")
print(f"on {result['n_pairs']} pairs from held-out prompts: accuracy {result['accuracy']:.3f}, "
      f"gold agreement {result['gold_agreement']:.3f}, noise ceiling {result['noise_ceiling_accuracy']:.3f}")

if args.shortfall:
    rows = shortfall_by_style(world, labeler, heldout, *pair_rewards(reward_model, heldout))
    print(f"\n{'styles of the two answers':>26} {'pairs':>6} {'accuracy':>9} {'ceiling':>8} {'points of the gap':>18}")
    for row in rows[:12]:
        print(f"{' vs '.join(row['styles']):>26} {row['pairs']:>6} {row['accuracy']:>9.0%} {row['ceiling']:>8.0%} "
              f"{row['points']:>18.1f}")
    print(f"{'(all ' + str(len(rows)) + ' kinds)':>26} {'':>6} {'':>9} {'':>8} {sum(r['points'] for r in rows):>18.1f}")
