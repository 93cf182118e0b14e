"""Does each preset learn? The whole pipeline per preset, and the figures issue 14 asks for.

    python benchmarks/bench_presets.py [--presets tiny small] [--seeds 0] [--jobs 1]
                                       [--method ppo] [--threads 1]

For each preset: ``run_pipeline`` with its defaults (1,000 pairs, 40 RL iterations of 64
episodes, the preset's training settings from ``models.PRESETS``), the base model cached in
``--runs`` (so a preset pretrained before is loaded: the pretraining seconds say which). Then:

- pretraining loss: the mean of the last 50 steps' losses (the corpus's floor is ~0.35);
- reward model: accuracy against the labels with its Wilson 95% interval and the noise ceiling
  that the labeler's noise allows, on the pipeline's ``--heldout-pairs`` fresh pairs from
  held-out prompts (facts no training pair asks), and its agreement with gold;
- gold win rate of the RL policy against the base model, with its bootstrap 95% interval.

With several ``--seeds``, each seed is a run of its own (its world, base model, labels and
RL seeded s), and a summary gives each preset's figures over the seeds: one run's win rate
moves by a few points with the seed, more than its interval says. ``--jobs 2`` runs two
seeds at once (one process each, ``--threads`` torch threads each).
Timings on a shared machine are noisy: the load average is printed with them.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import time

import torch

from rlhf_lite.models import PRESETS, base_model_path
from rlhf_lite.pipeline import run_pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS))
parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="one run per seed (world, base model, labels, RL)")
parser.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
parser.add_argument("--method", default="ppo", choices=("ppo", "rloo", "grpo"))
parser.add_argument("--heldout-pairs", type=int, default=1000)
parser.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is fastest on a busy shared CPU")
parser.add_argument("--runs", default=os.path.join(HERE, "..", "notebooks", "runs"),
                    help="cache of the base models (default: the lessons')")
parser.add_argument("--out", default=os.path.join(HERE, "..", "runs", "bench_presets"))
parser.add_argument("--device", default=None)
args = parser.parse_args()


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def interval(value: float, ci95) -> str:
    return f"{value:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}]"


def run(name: str, seed: int) -> tuple[str, dict]:
    """One pipeline run of preset ``name`` seeded ``seed``: (its report, its figures)."""
    torch.set_num_threads(args.threads)
    settings = PRESETS[name]
    history = os.path.join(base_model_path(args.runs, "trivia", name, seed=seed),
                           "loss_history.json")
    cached = os.path.isfile(history)                 # pretrained before: loaded, not timed here
    start = time.perf_counter()
    metrics = run_pipeline(os.path.join(args.out, f"{name}-seed{seed}"), seed=seed, preset=name,
                           cache_dir=args.runs, device=args.device, method=args.method,
                           heldout_pairs=args.heldout_pairs, progress=False)
    seconds = time.perf_counter() - start
    with open(history) as f:
        losses = json.load(f)
    rm, rl = metrics["reward_model"], metrics["rl"]
    figures = {"loss": sum(losses[-50:]) / 50,
               "gap": rm["noise_ceiling_accuracy"] - rm["heldout_accuracy"],
               "accuracy": rm["heldout_accuracy"], "win": rl["gold_win_rate_vs_base"]}
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["stage_seconds"].items())
    report = "\n".join([
        f"\n== preset {name}, seed {seed}: {settings.n_embd} wide, {settings.n_layer} layers, "
        f"device {metrics['device']}, load average now {load()}",
        f"seconds: {seconds:.0f} in all ({stages}); pretraining "
        f"{'cached, not timed here' if cached else 'timed here'}",
        f"pretraining: {len(losses)} steps at lr {settings.pretrain_lr:g}, "
        f"mean loss of the last 50: {figures['loss']:.4f}",
        f"reward model (lr {settings.reward_model_lr:g}, gate {settings.reward_model_gate_lr:g})"
        f", {rm['n_heldout_pairs']} fresh pairs from held-out prompts: accuracy "
        f"{interval(rm['heldout_accuracy'], rm['heldout_accuracy_ci95'])}, ceiling "
        f"{rm['noise_ceiling_accuracy']:.3f}, gap {figures['gap']:.3f}, gold agreement "
        f"{rm['gold_agreement']:.3f}",
        f"{args.method.upper()} (lr {settings.rl_lr:g}, {rl['episodes']} episodes): gold win "
        f"rate vs base {interval(rl['gold_win_rate_vs_base'], rl['gold_win_rate_vs_base_ci95'])}"
        f" (n={rl['gold_win_rate_n']}, {rl['gold_win_rate_prompts']} prompts), gold "
        f"{rl['initial_gold']:.2f} -> {rl['final_gold']:.2f}, final KL {rl['final_kl']:.2f}"])
    return report, figures


def summary(name: str, runs: list) -> str:
    """A preset's figures over its seeds: each seed's, their mean and standard deviation."""
    lines = [f"\n== preset {name} over seeds {', '.join(str(s) for s, _ in runs)}"]
    for key, what in (("loss", "pretraining loss"), ("accuracy", "reward-model accuracy"),
                      ("gap", "gap to the ceiling"), ("win", "gold win rate")):
        values = [figures[key] for _, figures in runs]
        lines.append(f"{what:>22}: mean {statistics.mean(values):.3f}, sd "
                     f"{statistics.stdev(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"threads {args.threads} a run, {args.jobs} run(s) at once, cores {os.cpu_count()}, "
          f"load average at start {load()}", flush=True)
    jobs = [(name, seed) for name in args.presets for seed in args.seeds]
    context = multiprocessing.get_context("spawn")   # a fresh torch in each worker
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {job: pool.submit(run, *job) for job in jobs}
        results = {}
        for job in jobs:                       # reports in job order, each once it is done
            report, results[job] = futures[job].result()
            print(report, flush=True)
    if len(args.seeds) > 1:
        for name in args.presets:
            print(summary(name, [(seed, results[name, seed]) for seed in args.seeds]))
