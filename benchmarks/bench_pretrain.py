"""How long pretraining a base model takes (the default, or --preset with its own settings), and
how well it learns.

    python benchmarks/bench_pretrain.py [--steps N] [--preset tiny]

Prints the seconds, the final loss (mean of the last 20 steps) and how far each answer style's
share in the model's samples is from its share in the corpus (the model should reproduce the mix).
"""
import argparse
import collections
import time

import torch

from rlhf_lite.models import (PRESETS, build_tokenizer, generate, make_base_model, pick_device,
                              pretrain)
from rlhf_lite.world import STYLE_MIX, World

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
parser.add_argument("--device", default=None)
args = parser.parse_args()

world = World("trivia", seed=0)
tokenizer = build_tokenizer(world)
model = make_base_model(tokenizer, args.preset)
settings = PRESETS[args.preset].pretraining      # the preset's learning rate, steps, batch
if args.steps is not None:
    settings["steps"] = args.steps
start = time.perf_counter()
history = pretrain(model, tokenizer, world, device=args.device, **settings)
seconds = time.perf_counter() - start

prompts = world.prompts * 8
texts = generate(model, tokenizer, prompts, max_new_tokens=48, seed=0).texts
counts = collections.Counter(world.style(p, t) for p, t in zip(prompts, texts))
print(f"device: {pick_device(args.device)}, threads: {torch.get_num_threads()}, "
      f"parameters: {sum(p.numel() for p in model.parameters()):,}")
print(f"pretraining: {len(history)} steps in {seconds:.1f} s, "
      f"final loss {sum(history[-20:]) / 20:.3f}")
print("style share, samples vs corpus:")
for style, share in STYLE_MIX.items():
    print(f"  {style:>10}: {counts[style] / len(texts):6.1%} vs {share:6.1%}")
print(f"  {'other':>10}: {counts['other'] / len(texts):6.1%}")
