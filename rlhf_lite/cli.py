"""The command line: ``rlhf-lite pipeline --out DIR`` (or ``python -m rlhf_lite pipeline``).

Under ``torchrun`` or ``accelerate launch`` it runs data-parallel (``parallel``)."""
from __future__ import annotations

import argparse
import json
import sys

from .world import CRITERIA, TASKS


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def device_name(text: str) -> str:
    """'cpu', 'cuda' or 'cuda:N', checked against this machine."""
    from .models import pick_device
    if not (text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use 'cpu', 'cuda' or 'cuda:N'")
    try:
        pick_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def model_dir(text: str) -> str:
    """A folder holding a Hugging Face model (its config.json)."""
    from .models import check_model_dir
    try:
        return check_model_dir(text)
    except FileNotFoundError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def labels_file(text: str) -> str:
    """A file of a learner's labels, read once here so that a bad one fails before any training."""
    import os
    from .taste import read_labels
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r} (give a label-store file, e.g. "
                                         "notebooks/runs/lesson1/labels.jsonl, or TRL JSON Lines)")
    try:
        read_labels(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    from .models import PRESETS
    from .ppo import PPOConfig
    parser = argparse.ArgumentParser(prog="rlhf-lite",
                                     description="RLHF on a laptop: the course's command line.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline = commands.add_parser(
        "pipeline", help="run every stage with simulated labelers; write metrics.json and plots",
        description="Pretrain the base model, label pairs with a simulated labeler, train the "
                    "reward model, run PPO, and compare the PPO policy with the base model on "
                    "gold. Writes OUT/metrics.json, the plots, the pairs and the models.")
    pipeline.add_argument("--out", required=True,
                          help="folder for metrics.json, plots and models (made if missing)")
    pipeline.add_argument("--seed", type=int, default=0,
                          help="seed of the world, the models and the labeler (default 0)")
    pipeline.add_argument("--device", type=device_name, default=None,
                          help="cpu, cuda or cuda:N (default: CUDA if present)")
    pipeline.add_argument("--task", choices=sorted(TASKS), default="trivia",
                          help="the world's task (default trivia)")
    pipeline.add_argument(
        "--criteria", choices=sorted(CRITERIA), default=None,
        help="what the simulated labelers prefer (default helpful); with --labels, the prior of "
             "your taste (default: the criteria you labeled by)")
    pipeline.add_argument(
        "--labels", type=labels_file, default=None, metavar="FILE",
        help="your labels (a label-store file, or TRL prompt/chosen/rejected JSON Lines): your "
             "taste is fitted to them and a stand-in with that taste labels the rest")
    pipeline.add_argument("--pairs", type=positive_int, default=1000,
                          help="labelled pairs (default 1000)")
    pipeline.add_argument("--method", choices=("ppo", "rloo", "grpo"), default="ppo",
                          help="the RL stage: PPO, or the critic-free RLOO or GRPO (default ppo)")
    pipeline.add_argument("--ppo-steps", type=positive_int, default=None,
                          help=f"iterations of the RL stage, {PPOConfig.batch_size} episodes "
                               f"each (default: the method's; PPO's is {PPOConfig.steps})")
    pipeline.add_argument("--pretrain-steps", type=positive_int, default=None,
                          help="pretraining steps of the base model (default: the preset's)")
    pipeline.add_argument("--preset", choices=list(PRESETS), default=None,
                          help="base model size and training settings: tiny (default; a CPU), "
                               "small (a CPU, longer), gpu (~25M parameters, a GPU)")
    pipeline.add_argument("--model", type=model_dir, default=None, metavar="DIR",
                          help="your own base model: a local Hugging Face causal LM folder with "
                               "its tokenizer (not pretrained; training settings from --preset, "
                               "default the preset nearest its width)")
    pipeline.add_argument("--threads", type=positive_int, default=None,
                          help="CPU threads for torch (default: torch's choice, one per core); "
                               "1 is faster on a machine other jobs keep busy")
    pipeline.add_argument("--cache-dir", default=None,
                          help="where the base model is cached (default OUT/runs); "
                               "e.g. notebooks/runs to reuse the lessons'")
    pipeline.add_argument("--tensorboard", metavar="DIR", default=None,
                          help="write TensorBoard logs of every stage to DIR "
                               "(view them with: tensorboard --logdir DIR)")
    pipeline.add_argument("--resume", action="store_true",
                          help="go on from PPO's last checkpoint in OUT/checkpoints (saved every "
                               "10 iterations); the stages before PPO run again, seeded")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pipeline":
        from . import parallel
        from .models import UnusableModel
        from .pipeline import run_pipeline
        if args.model and args.pretrain_steps:
            parser.error("--pretrain-steps has no effect with --model: "
                         "your model is not pretrained")
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        try:
            metrics = run_pipeline(args.out, task=args.task, criteria=args.criteria, seed=args.seed,
                                   device=args.device, pairs=args.pairs, ppo_steps=args.ppo_steps,
                                   cache_dir=args.cache_dir, pretrain_steps=args.pretrain_steps,
                                   labels=args.labels, tensorboard=args.tensorboard,
                                   resume=args.resume, method=args.method,
                                   preset=args.preset, model_dir=args.model)
        except UnusableModel as e:
            parser.error(f"argument --model: {e}")
        parallel.finish()
        if metrics is not None:          # process 0 of a data-parallel run, or the only one
            print(json.dumps(metrics, indent=2))
            print(f"wrote {args.out}/metrics.json and the plots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
