"""Stage 1: the preference dataset.

The model writes several completions per prompt; a labeler sees two of them and says which one
they prefer. Pairs, not scores: two people's 1-10 scales differ (one is harsh, one generous),
but they agree far more often on *which* of two answers is better.

A judgement is stored as a ``Comparison`` (prompt, chosen, rejected); the ``prompt`` /
``chosen`` / ``rejected`` layout is the one TRL and the ``datasets`` library use.
"""
from __future__ import annotations

import dataclasses
import itertools
import random

from .models import generate


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One judgement: ``chosen`` was preferred over ``rejected`` as an answer to ``prompt``.

    tie: the labeler saw no difference; both_bad: neither is acceptable. In both cases the
    chosen/rejected order carries no preference (the reward model's loss says what it does then).
    """
    prompt: str
    chosen: str
    rejected: str
    tie: bool = False
    both_bad: bool = False
    labeler: str = ""


def sample_pairs(model, tokenizer, prompts, completions_per_prompt: int = 4,
                 pairs_per_prompt: int = 2, temperature: float = 1.0,
                 max_new_tokens: int = 24, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, completion_1, completion_2) pairs of *distinct* completions sampled from the model.

    Each prompt gets ``completions_per_prompt`` samples; up to ``pairs_per_prompt`` pairs are drawn
    from the distinct ones (exact duplicates skipped, so a prompt may give fewer pairs).
    """
    rng = random.Random(seed)
    batch = [p for p in prompts for _ in range(completions_per_prompt)]
    texts = generate(model, tokenizer, batch, max_new_tokens, temperature, seed=seed).texts
    pairs = []
    for i, prompt in enumerate(prompts):
        distinct = list(dict.fromkeys(texts[i * completions_per_prompt:(i + 1) * completions_per_prompt]))
        candidates = list(itertools.combinations(distinct, 2))
        rng.shuffle(candidates)
        pairs += [(prompt, a, b) for a, b in candidates[:pairs_per_prompt]]
    return pairs


def simulate_comparisons(labeler, pairs) -> list[Comparison]:
    """Label ``pairs`` with a ``SimulatedLabeler``; the first completion is shown on the left."""
    out = []
    for prompt, a, b in pairs:
        left_wins = labeler.choose(prompt, a, b) == "A"
        chosen, rejected = (a, b) if left_wins else (b, a)
        out.append(Comparison(prompt, chosen, rejected, labeler=labeler.name))
    return out


def make_preference_dataset(world, model, tokenizer, labeler, n_pairs: int = 1000,
                            prompts=None, temperature: float = 1.0, seed: int = 0) -> list[Comparison]:
    """``n_pairs`` comparisons of the model's own samples on ``prompts`` (default: the world's
    training prompts), labelled by a simulated ``labeler``: stage 1 without a human."""
    prompts = list(prompts or world.split_prompts()[0])
    rng = random.Random(seed)
    pairs = []
    round_ = 0
    while len(pairs) < n_pairs:
        chosen_prompts = [rng.choice(prompts) for _ in range(max(1, (n_pairs - len(pairs)) // 2 + 8))]
        pairs += sample_pairs(model, tokenizer, chosen_prompts, temperature=temperature,
                              max_new_tokens=world.max_new_tokens, seed=seed + round_)
        round_ += 1
    return simulate_comparisons(labeler, pairs[:n_pairs])


def to_trl(comparisons) -> list[dict]:
    """Rows of ``{"prompt", "chosen", "rejected"}`` for TRL / ``datasets.Dataset.from_list``.
    Ties and both-bad judgements carry no preference, so they are left out."""
    return [dict(prompt=c.prompt, chosen=c.chosen, rejected=c.rejected)
            for c in comparisons if not (c.tie or c.both_bad)]


def from_trl(rows, labeler: str = "imported") -> list[Comparison]:
    """``Comparison``s from ``{"prompt", "chosen", "rejected"}`` rows (a list or a ``datasets.Dataset``)."""
    out = []
    for i, row in enumerate(rows):
        missing = {"prompt", "chosen", "rejected"} - set(row)
        if missing:
            raise ValueError(f"row {i} lacks {sorted(missing)}; TRL preference rows need "
                             "'prompt', 'chosen' and 'rejected'")
        out.append(Comparison(row["prompt"], row["chosen"], row["rejected"], labeler=labeler))
    return out
