"""PPO speed: episodes per second, and seconds per phase (generation, scoring, update).

    python benchmarks/bench_ppo.py [--iterations 10] [--batch-size 64] [--max-new-tokens 20]
                                   [--ppo-epochs 4] [--minibatch-size 64] [--reward-model DIR]
                                   [--threads N] [--compare-trl]

The setting of the issue's comparison: the default base model, 64 prompts a batch, completions
of up to 20 tokens, 4 PPO epochs, a reward model the size of the base model. Without
``--reward-model`` a reward model with an untrained head stands in: the cost of scoring does not
depend on what the reward model has learned. Wall-clock figures on a shared machine are
inflated; the CPU seconds this process used are printed too (with one thread, episodes per
CPU-second is about what an idle core would do).

``--compare-trl`` also runs TRL 1.12's PPOTrainer (it was removed in TRL 1.13) in the same
setting, on the same models, right after ours, and prints the ratio: the only speed comparison
that holds, measured side by side in one run. TRL 1.12 need not replace the TRL you have:
``pip install --no-deps --target /tmp/trl112 trl==1.12.0`` and run with
``PYTHONPATH=/tmp/trl112``.
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
parser.add_argument("--iterations", type=int, default=10,
                    help="timed PPO iterations (after one warm-up)")
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--max-new-tokens", type=int, default=20)
parser.add_argument("--ppo-epochs", type=int, default=4)
parser.add_argument("--minibatch-size", type=int, default=PPOConfig.minibatch_size)
parser.add_argument("--length-chunks", type=int, default=PPOConfig.length_chunks,
                    help="PPOConfig.length_chunks (1 = one pass over the padded batch)")
parser.add_argument("--reward-model", default=None, help="a folder RewardModel.save wrote")
parser.add_argument("--runs-dir", default="runs", help="where the base model is cached")
parser.add_argument("--device", default=None)
parser.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's)")
parser.add_argument("--compare-trl", action="store_true",
                    help="also time TRL 1.12's PPOTrainer (needs trl==1.12.0, see above)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

world = World("trivia", seed=0)
model, tokenizer, _, _ = get_base_model(world, runs_dir=args.runs_dir, device=args.device)
reward_model = (RewardModel.load(args.reward_model, args.device) if args.reward_model
                else RewardModel.from_base(model, tokenizer))
config = PPOConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   ppo_epochs=args.ppo_epochs, minibatch_size=args.minibatch_size, log_samples=0,
                   length_chunks=args.length_chunks)
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
      f"{args.ppo_epochs} PPO epochs, minibatch {args.minibatch_size}, "
      f"length chunks {args.length_chunks}, mean length {entry['length']:.1f}")
print(f"episodes/s: {episodes / wall:.1f} (wall clock), {episodes / cpu:.1f} per CPU-second "
      f"({args.iterations} iterations, {episodes} episodes)")
print("seconds per iteration: "
      + ", ".join(f"{k} {v / args.iterations:.3f}" for k, v in phases.items()))


def time_trl(model, tokenizer, reward_model_dir, prompts):
    """TRL 1.12's PPOTrainer in the same setting: episodes per second over the iterations
    after the first."""
    import copy
    import tempfile

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    try:
        from trl.experimental.ppo import PPOConfig as TRLConfig, PPOTrainer as TRLTrainer
    except ImportError:
        raise SystemExit("--compare-trl needs TRL's PPOTrainer: "
                         "pip install trl==1.12.0 (removed in trl 1.13)")

    class Clock(TrainerCallback):
        marks = []

        def on_step_end(self, *_, **__):
            self.marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as scratch:
        if reward_model_dir is None:
            reward_model.model.save_pretrained(scratch)
        source = reward_model_dir or scratch
        reward, value = (AutoModelForSequenceClassification.from_pretrained(
                             source, local_files_only=True) for _ in range(2))
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.padding_side = "left"
        policy = copy.deepcopy(model).cpu()
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
        dataset = Dataset.from_dict({"input_ids": [tokenizer(p, add_special_tokens=False).input_ids
                                                   for p in prompts * 8]})
        config = TRLConfig(output_dir=scratch, per_device_train_batch_size=args.batch_size,
                           num_mini_batches=args.batch_size // args.minibatch_size,
                           num_ppo_epochs=args.ppo_epochs,
                           response_length=args.max_new_tokens, stop_token="eos", temperature=1.0,
                           missing_eos_penalty=1.0, kl_coef=PPOConfig.kl_coef,
                           learning_rate=PPOConfig.learning_rate,
                           total_episodes=(args.iterations + 1) * args.batch_size,
                           num_sample_generations=0,
                           report_to="none", save_strategy="no", use_cpu=True, logging_steps=10**6)
        trainer = TRLTrainer(args=config, processing_class=tokenizer, model=policy,
                             ref_model=copy.deepcopy(policy), reward_model=reward,
                             value_model=value, train_dataset=dataset, callbacks=[Clock()])
        trainer.train()
    (wall0, cpu0), (wall1, cpu1) = Clock.marks[0], Clock.marks[-1]
    episodes = (len(Clock.marks) - 1) * args.batch_size
    return episodes / (wall1 - wall0), episodes / (cpu1 - cpu0)


if args.compare_trl:
    trl_wall, trl_cpu = time_trl(model, tokenizer, args.reward_model, world.split_prompts()[0])
    print(f"TRL 1.12 PPOTrainer, same setting: {trl_wall:.1f} episodes/s (wall clock), "
          f"{trl_cpu:.1f} per CPU-second; "
          f"rlhf-lite is {episodes / wall / trl_wall:.2f}x (wall clock), "
          f"{episodes / cpu / trl_cpu:.2f}x (CPU)")
