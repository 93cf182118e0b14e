"""A class of labelers: several learners' labels side by side.

Everyone who draws lesson 1's pairs from the same base model with the same seed gets the same
first pairs, so a class's label files overlap there. Pooled, they show with real people what
lesson 1 says in words: a preference dataset records the preferences of its labelers, not of
humanity.

- **Agreement**: for two learners, the share of the pairs both gave a preference on (ties and
  both-bad left out) where they picked the same answer, with its 95% Wilson interval and n.
  Two careful labelers with the same criteria agree on most pairs; different criteria, less.
- **Tastes**: each learner's taste (``taste.fit_taste``), side by side (``plots.plot_tastes``).

With no files at hand, ``simulated_class`` makes a class of simulated learners, each with their
own criteria and care (``SIMULATED_CLASS``).
"""
from __future__ import annotations

import itertools
import os

from .preferences import pair_key, simulate_comparisons
from .stats import wilson_interval
from .taste import fit_taste, read_labels
from .world import SimulatedLabeler

SIMULATED_CLASS = {"Ada": ("helpful", 1.0), "Ben": ("concise", 1.0), "Chloe": ("friendly", 1.0),
                   "Dev": ("helpful", 2.0)}
"""Simulated learners: name -> (the criteria they label by, their noise temperature T)."""


def pool_labels(files) -> dict:
    """{learner: (their labels, the criteria they labeled by or None)} from label files (label
    stores or TRL JSON Lines, ``taste.read_labels``): a {name: path} dict, or paths named after
    their files (``alice.jsonl`` -> "alice"; the folder too when two files share a name)."""
    if not isinstance(files, dict):
        paths = [os.fspath(f) for f in files]
        stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        files = {(stem if stems.count(stem) == 1 else
                  f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}/{stem}"): p
                 for stem, p in zip(stems, paths)}
    return {name: read_labels(path) for name, path in files.items()}


def simulated_class(world, pairs, learners=None, seed: int = 0) -> dict:
    """A class of simulated learners (``SIMULATED_CLASS`` by default) who each label ``pairs``
    (the shared first pairs); the same shape as ``pool_labels``, criteria unknown (None)."""
    learners = SIMULATED_CLASS if learners is None else learners
    pooled = {}
    for i, (name, (criteria, temperature)) in enumerate(learners.items()):
        labeler = SimulatedLabeler(world, criteria, temperature, seed=seed + i, name=name)
        pooled[name] = (simulate_comparisons(labeler, pairs), None)
    return pooled


def agreement(pooled) -> list[dict]:
    """For each two learners of ``pooled`` (as ``pool_labels`` returns): ``n``, the pairs both gave
    a preference on; ``agree``, the share where they picked the same answer; ``ci95``."""
    chosen = {name: {pair_key((c.prompt, c.chosen, c.rejected)): c.chosen
                     for c in labels if not (c.tie or c.both_bad)}
              for name, (labels, _) in pooled.items()}
    rows = []
    for a, b in itertools.combinations(pooled, 2):
        shared = chosen[a].keys() & chosen[b].keys()
        same = sum(chosen[a][k] == chosen[b][k] for k in shared)
        rows.append(dict(a=a, b=b, n=len(shared), ci95=wilson_interval(same, len(shared)),
                         agree=same / len(shared) if shared else float("nan")))
    return rows


def class_tastes(world, pooled, preset="helpful", **fit_args) -> dict:
    """{learner: Taste}: each one's taste, the prior centred on the criteria they labeled by when
    their file says it, else on ``preset`` (one prior for all shows what the labels alone say)."""
    return {name: fit_taste(world, labels, criteria or preset, name=name, **fit_args)
            for name, (labels, criteria) in pooled.items()}


def format_agreement(rows) -> str:
    """The agreement rows as a table a lesson prints."""
    lines = [f"{'':24}{'agree':>7}  {'95% interval':>13}{'n':>6}"]
    for r in rows:
        interval = f"{r['ci95'][0]:.0%}-{r['ci95'][1]:.0%}" if r["n"] else "-"
        lines.append(f"{r['a'] + ' vs ' + r['b']:24}{r['agree']:>7.0%}  {interval:>13}{r['n']:>6}"
                     if r["n"] else f"{r['a'] + ' vs ' + r['b']:24}{'no pair labeled by both':>26}")
    return "\n".join(lines)
