"""PPO speed: episodes per second, and seconds per phase (generation, scoring, update).

    python benchmarks/bench_ppo.py [--iterations 10] [--batch-size 64] [--max-new-tokens 20]
                                   [--ppo-epochs 4] [--minibatch-size 32] [--reward-model DIR]

The setting of the issue's comparison: the default base model, 64 prompts a batch, completions
of up to 20 tokens, 4 PPO epochs, a reward model the size of the base model. (TRL's last PPO
trainer, trl 1.12, does about 58 episodes/s in this setting on a 2-core CPU.) Without
``--reward-model`` a reward model with an untrained head stands in: the cost of scoring does not
depend on what the reward model has learned. Wall-clock figures on a shared machine are inflated;
the CPU seconds this process used are printed too (with one thread, episodes per CPU-second is
about what an idle core would do).
"""
import argparse
import os
import time

import torch

from rlhf_lite.models import get_base_model, pick_device
from rlhf_lite.ppo import PPOConfig, PPOTrainer
from rlhf_lite.reward_model import RewardModel
from rlhf_lite.world import World

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--iterations", type=int, default=10, help="timed PPO iterations (after one warm-up)")
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--max-new-tokens", type=int, default=20)
parser.add_argument("--ppo-epochs", type=int, default=4)
parser.add_argument("--minibatch-size", type=int, default=PPOConfig.minibatch_size)
parser.add_argument("--reward-model", default=None, help="a folder RewardModel.save wrote")
parser.add_argument("--runs-dir", default="runs", help="where the base model is cached")
parser.add_argument("--device", default=None)
parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

world = World("trivia", seed=0)
model, tokenizer, _, _ = get_base_model(world, runs_dir=args.runs_dir, device=args.device)
reward_model = (RewardModel.load(args.reward_model, args.device) if args.reward_model
                else RewardModel.from_base(model, tokenizer))
config = PPOConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, ppo_epochs=args.ppo_epochs,
                   minibatch_size=args.minibatch_size, log_samples=0)
trainer = PPOTrainer(model, tokenizer, reward_model, world.split_prompts()[0], config)
trainer.step()  # warm-up

phases = {"generation": 0.0, "scoring": 0.0, "update": 0.0}
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(args.iterations):
    entry = trainer.step()
    for phase in phases:
        phases[phase] += entry["seconds"][phase]
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
episodes = args.iterations * args.batch_size

print(f"device: {pick_device(args.device)}, threads: {torch.get_num_threads()}, "
      f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
print(f"setting: batch {args.batch_size}, completions up to {args.max_new_tokens} tokens, "
      f"{args.ppo_epochs} PPO epochs, minibatch {args.minibatch_size}, mean length {entry['length']:.1f}")
print(f"episodes/s: {episodes / wall:.1f} (wall clock), {episodes / cpu:.1f} per CPU-second "
      f"({args.iterations} iterations, {episodes} episodes)")
print("seconds per iteration: " + ", ".join(f"{k} {v / args.iterations:.3f}" for k, v in phases.items()))
