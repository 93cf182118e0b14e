"""How good the reward model is on facts it never saw in a training pair, and how long it trains.

    python benchmarks/bench_reward_model.py [--seeds 0 1] [--pairs 1000] [--heldout-pairs 2000]
        [--threads 1] [--last-token] [--shortfall]

The measurement (issue 10), for each seed s:
- base model: the default tiny base, ``get_base_model(World("trivia"), runs_dir=...)``;
- training: ``--pairs`` pairs of its samples on training prompts, labelled by
  ``SimulatedLabeler(world, "helpful", seed=s)`` (``make_preference_dataset(..., seed=s)``), then
  ``train_reward_model`` with its defaults (seed s; it keeps 10% of the pairs for its own check);
- evaluation: ``--heldout-pairs`` fresh pairs from ``world.split_prompts()[1]``, prompts whose
  facts no training prompt asks, labelled by the same labeler object (seed s + 1);
- reported: accuracy against those labels with its 95% Wilson interval and n, the noise ceiling
  (``noise_ceiling(labeler, pairs)``: what a perfect model can expect), the gold utility's own
  accuracy on the same labels (what a perfect model got on this draw of label noise, ties 1/2),
  gold agreement, training seconds, and with ``--shortfall`` where the gap is by answer styles.
``--last-token`` also trains the plain last-token reward model (``read_log_probs=False``) on the
same pairs, side by side, for what the token term adds.
"""
import argparse
import os
import time

import torch

from rlhf_lite.models import get_base_model, pick_device
from rlhf_lite.preferences import make_preference_dataset
from rlhf_lite.reward_model import (gold_agreement, noise_ceiling, pair_rewards, shortfall_by_style,
                                    train_reward_model)
from rlhf_lite.stats import accuracy
from rlhf_lite.world import SimulatedLabeler, World

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--task", default="trivia", choices=["trivia", "summaries"])
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
parser.add_argument("--pairs", type=int, default=1000)
parser.add_argument("--heldout-pairs", type=int, default=2000)
parser.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is fastest on a busy shared CPU, "
                         "where threads wait on each other")
parser.add_argument("--runs",
                    default=os.path.join(os.path.dirname(__file__), "..", "notebooks", "runs"))
parser.add_argument("--device", default=None)
parser.add_argument("--last-token", action="store_true",
                    help="also train the plain last-token reward model on the same pairs")
parser.add_argument("--shortfall", action="store_true",
                    help="where the accuracy falls short of the ceiling")
args = parser.parse_args()
torch.set_num_threads(args.threads)

world = World(args.task, seed=0)
model, tokenizer, _, _ = get_base_model(world, runs_dir=args.runs, device=args.device)
train_prompts, heldout_prompts = world.split_prompts()
print(f"device: {pick_device(args.device)}, threads: {torch.get_num_threads()}, "
      f"cores: {os.cpu_count()}, load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
heldout_facts = {world.fact(p) for p in heldout_prompts}
print(f"{args.task}: {len(train_prompts)} training prompts, {len(heldout_prompts)} held-out "
      f"prompts asking {len(heldout_facts)} facts no training prompt asks")
print(f"per seed s: {args.pairs} pairs on training prompts (helpful labeler, seed s) -> "
      f"train_reward_model defaults; {args.heldout_pairs} fresh pairs on held-out prompts, "
      "same labeler\n")

variants = {"gated log-probs": True} | ({"last token only": False} if args.last_token else {})
print(f"{'seed':>4} {'reward model':>16} {'accuracy [95% interval] (n)':>31} {'ceiling':>8} "
      f"{'gold':>6} {'gap':>6} {'gold agr.':>9} {'train s':>8}")
for seed in args.seeds:
    labeler = SimulatedLabeler(world, "helpful", temperature=1.0, seed=seed)
    pairs = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=args.pairs, seed=seed)
    heldout = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=args.heldout_pairs,
                                      prompts=heldout_prompts, seed=seed + 1)
    counted = [c for c in heldout if not (c.tie or c.both_bad)]
    prompts = [c.prompt for c in counted]
    u_chosen = world.gold_many(prompts, [c.chosen for c in counted], labeler.criteria)
    u_rejected = world.gold_many(prompts, [c.rejected for c in counted], labeler.criteria)
    gold = accuracy([(a > b) + 0.5 * (a == b) for a, b in zip(u_chosen, u_rejected)])
    ceiling = noise_ceiling(labeler, counted)
    for name, read_log_probs in variants.items():
        start = time.perf_counter()
        reward_model, _ = train_reward_model(model, tokenizer, pairs, seed=seed, device=args.device,
                                             read_log_probs=read_log_probs,
                                             max_new_tokens=world.max_new_tokens)
        seconds = time.perf_counter() - start
        r_chosen, r_rejected = pair_rewards(reward_model, counted)
        acc = accuracy((r_chosen > r_rejected).tolist())
        agree = gold_agreement(world, counted, r_chosen, r_rejected, labeler.criteria)
        print(f"{seed:>4} {name:>16} {str(acc):>31} {ceiling:>8.3f} {gold.value:>6.3f} "
              f"{ceiling - acc.value:>6.3f} {agree:>9.3f} {seconds:>8.1f}")
        if args.shortfall:
            rows = shortfall_by_style(world, labeler, counted, r_chosen, r_rejected)
            print(f"{'styles of the two answers':>31} {'pairs':>6} {'accuracy':>9} {'ceiling':>8} "
                  f"{'points of the gap':>18}")
            for row in rows[:8]:
                print(f"{' vs '.join(row['styles']):>31} {row['pairs']:>6} {row['accuracy']:>9.0%} "
                      f"{row['ceiling']:>8.0%} {row['points']:>18.1f}")
            print(f"{'(all ' + str(len(rows)) + ' kinds)':>31} {'':>6} {'':>9} {'':>8} "
                  f"{sum(r['points'] for r in rows):>18.1f}\n")
print("\naccuracy: against the labels; ceiling: expected accuracy of a perfect model; gold: the "
      "gold utility's own accuracy on these labels; gap: ceiling - accuracy; train s: "
      "train_reward_model, including its held-out check and the normalisation")
print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
