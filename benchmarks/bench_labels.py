"""Your labels, your model: scripted learners label lesson 1's first pairs; does the policy follow?

    python benchmarks/bench_labels.py [--ppo-steps 40] [--pairs 1000] [--labels 40] [--threads 1]

Four runs of ``run_pipeline`` from the same base model (seed 0): the default ``helpful``
pipeline (simulated labelers), and ``--labels`` runs for three scripted learners who each label
lesson 1's first ``--labels`` pairs by hand (``draw_pairs(..., n_pairs=1200, seed=0)``, the
widget's pairs):

- "shorter": always prefers the shorter answer (in words); of two the same length, the one the
  helpful judge prefers (a tie when it sees none);
- "friendlier": prefers the answer with more friendly words (the judge's ``friendly``); of two
  as friendly, the one the helpful judge prefers;
- "plainer": the opposite on tone: fewer friendly words first, then the helpful judge.

The helpful pipeline's policy is itself friendly (PPO finds that the friendly templates pay under
``helpful``), so "plainer" is the contrast that shows the labels steering the tone.

Prints each learner's fitted taste (weights and 95% intervals, leave-one-out accuracy), then for
each run: the mean answer length and mean ``friendly`` feature of the final policy on held-out
prompts (``--samples`` per prompt), and the ratios to the helpful run.
"""
import argparse
import os
import tempfile
import time

import torch

from rlhf_lite.label_store import LabelStore, shown_sides
from rlhf_lite.models import generate, get_base_model, load_model
from rlhf_lite.pipeline import run_pipeline
from rlhf_lite.preferences import draw_pairs
from rlhf_lite.taste import fit_taste, read_labels
from rlhf_lite.world import World

RUNS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks", "runs")


def scripted_learner(world, feature: str, sign: float):
    """choose(prompt, left, right) -> "A", "B" or "tie": the answer with more of sign * feature,
    then the one the helpful judge prefers."""
    def choose(prompt, left, right):
        key = [(sign * world.features(prompt, text)[feature], world.gold(prompt, text))
               for text in (left, right)]
        return "A" if key[0] > key[1] else "B" if key[1] > key[0] else "tie"
    return choose


def label_by_hand(path, pairs, choose, criteria: str = "helpful") -> None:
    """Label ``pairs`` into a label store at ``path`` as the widget does: sides by ``shown_sides``,
    labeler "you" (not simulated), the criteria the learner was shown."""
    with LabelStore(path) as store:
        store.label_many([dict(prompt=p, left=left, right=right, swapped=swapped, criteria=criteria,
                               choice=choose(p, left, right), labeler="you")
                          for p, (left, right, swapped) in ((p[0], shown_sides(p)) for p in pairs)])


def policy_answers(out, world, samples: int, seed: int = 1, policy=None, tokenizer=None) -> dict:
    """Mean length (words) and mean ``friendly`` feature of the policy in ``out`` (or ``policy``)
    in its answers to the held-out prompts."""
    if policy is None:
        policy, tokenizer = load_model(os.path.join(out, "policy"))
    prompts = [p for p in world.split_prompts()[1] for _ in range(samples)]
    texts = generate(policy, tokenizer, prompts, world.max_new_tokens, seed=seed).texts
    features = [world.features(p, t) for p, t in zip(prompts, texts)]
    return {k: sum(f[k] for f in features) / len(features) for k in ("length", "friendly")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppo-steps", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=40, help="pairs each scripted learner labels")
    parser.add_argument("--samples", type=int, default=8, help="answers per held-out prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder of the runs (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="bench_labels-")
    world = World("trivia", seed=0)
    model, tokenizer, _, _ = get_base_model(world, runs_dir=RUNS)
    hand = draw_pairs(world, model, tokenizer, n_pairs=1200, seed=0)[:args.labels]
    learners = {"shorter": scripted_learner(world, "length", -1.0),
                "friendlier": scripted_learner(world, "friendly", +1.0),
                "plainer": scripted_learner(world, "friendly", -1.0)}
    runs = {"helpful": None}
    for name, choose in learners.items():
        runs[name] = os.path.join(out, f"{name}.jsonl")
        label_by_hand(runs[name], hand, choose)

    results = {}
    for name, labels in runs.items():
        start = time.perf_counter()
        metrics = run_pipeline(os.path.join(out, name), seed=0, pairs=args.pairs, labels=labels,
                               ppo_steps=args.ppo_steps, cache_dir=RUNS, progress=False)
        results[name] = dict(metrics=metrics, seconds=time.perf_counter() - start,
                             **policy_answers(os.path.join(out, name), world, args.samples))

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average: {load}, cores: {os.cpu_count()}, threads: {args.threads}; "
          f"{args.pairs} pairs, {args.ppo_steps} PPO steps; runs in {out}")
    for name in learners:
        print(f"\n'{name}' learner, {args.labels} labels:")
        print(fit_taste(world, read_labels(runs[name])[0], "helpful"))
    base_model = policy_answers(None, world, args.samples, policy=model, tokenizer=tokenizer)
    print(f"\nthe base model: length {base_model['length']:.2f}, "
          f"friendly {base_model['friendly']:.2f}")
    base = results["helpful"]
    print(f"\n{'run':>12} {'seconds':>8} {'length':>7} {'x helpful':>10} {'friendly':>9} "
          f"{'x helpful':>10} {'win rate':>9} {'yours / stand-in':>17}")
    for name, r in results.items():
        labels = r["metrics"].get("labels", {})
        who = f"{labels['yours']} / {labels['stand_in']}" if labels else "-"
        print(f"{name:>12} {r['seconds']:>8.0f} {r['length']:>7.2f} "
              f"{r['length'] / base['length']:>10.2f} "
              f"{r['friendly']:>9.2f} {r['friendly'] / max(base['friendly'], 1e-9):>10.2f} "
              f"{r['metrics']['ppo']['gold_win_rate_vs_base']:>9.2f} {who:>17}")


if __name__ == "__main__":
    main()
