"""Stage 1: the preference dataset.

The model writes several completions per prompt; a labeler sees two of them and says which one
they prefer. Pairs, not scores: two people's 1-10 scales differ (one is harsh, one generous),
but they agree far more often on *which* of two answers is better.

- pairs: ``sample_pairs`` / ``draw_pairs`` (distinct completions of the model's own samples);
- labels: ``label_store.py`` keeps every judgement on disk the moment it is made (the widget in
  ``widget.py`` writes to it); ``simulate_comparisons`` has a simulated labeler judge pairs;
- comparisons: a judgement as a ``Comparison`` (prompt, chosen, rejected); ``trl_format.py``
  writes and reads them in TRL's preference layouts (``to_trl``, ``write_trl_jsonl``,
  ``from_trl``, ``read_trl_jsonl``, all importable from here too).
"""
from __future__ import annotations

import dataclasses
import itertools
import random

from .models import generate
from .trl_format import from_trl, read_trl_jsonl, to_trl, write_trl_jsonl  # noqa: F401


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


def pair_key(pair) -> tuple[str, str, str]:
    """A pair's identity, whatever the order of its completions: (prompt, *sorted completions)."""
    prompt, a, b = pair
    return (prompt, *sorted((a, b)))


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


def draw_pairs(world, model, tokenizer, n_pairs: int = 1000, prompts=None,
               temperature: float = 1.0, seed: int = 0, distinct: bool = True) -> list[tuple[str, str, str]]:
    """``n_pairs`` (prompt, completion_1, completion_2) pairs of the model's own samples on
    ``prompts`` (default: the world's training prompts), drawn with ``sample_pairs`` round after
    round. ``distinct``: never the same two completions of the same prompt twice (a label store
    keys its labels by pair, so a repeated pair would be one label, not two)."""
    prompts = list(prompts or world.split_prompts()[0])
    rng = random.Random(seed)
    pairs, seen = [], set()
    round_, idle_rounds = 0, 0
    while len(pairs) < n_pairs:
        chosen_prompts = [rng.choice(prompts) for _ in range(max(1, (n_pairs - len(pairs)) // 2 + 8))]
        new = sample_pairs(model, tokenizer, chosen_prompts, temperature=temperature,
                           max_new_tokens=world.max_new_tokens, seed=seed + round_)
        if distinct:
            new = [p for p in new if pair_key(p) not in seen and not seen.add(pair_key(p))]
        pairs += new
        round_ += 1
        idle_rounds = 0 if new else idle_rounds + 1
        if idle_rounds == 20:
            raise RuntimeError(f"only {len(pairs)} of {n_pairs} pairs after {round_} rounds: the model "
                               "writes too few distinct completions; raise the temperature or ask for fewer pairs")
    return pairs[:n_pairs]


def make_preference_dataset(world, model, tokenizer, labeler, n_pairs: int = 1000,
                            prompts=None, temperature: float = 1.0, seed: int = 0) -> list[Comparison]:
    """``n_pairs`` comparisons of the model's own samples on ``prompts`` (default: the world's
    training prompts), labelled by a simulated ``labeler``: stage 1 without a human."""
    pairs = draw_pairs(world, model, tokenizer, n_pairs, prompts, temperature, seed, distinct=False)
    return simulate_comparisons(labeler, pairs)
