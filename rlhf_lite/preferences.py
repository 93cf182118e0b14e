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
from .stats import Estimate, accuracy
from .world import SimulatedLabeler
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
        distinct = list(dict.fromkeys(
            texts[i * completions_per_prompt:(i + 1) * completions_per_prompt]))
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
               temperature: float = 1.0, seed: int = 0,
               distinct: bool = True) -> list[tuple[str, str, str]]:
    """``n_pairs`` (prompt, completion_1, completion_2) pairs of the model's own samples on
    ``prompts`` (default: the world's training prompts), drawn with ``sample_pairs`` round after
    round. ``distinct``: never the same two completions of the same prompt twice (a label store
    keys its labels by pair, so a repeated pair would be one label, not two)."""
    prompts = list(prompts or world.split_prompts()[0])
    rng = random.Random(seed)
    pairs, seen = [], set()
    round_, idle_rounds = 0, 0
    while len(pairs) < n_pairs:
        chosen_prompts = [rng.choice(prompts)
                          for _ in range(max(1, (n_pairs - len(pairs)) // 2 + 8))]
        new = sample_pairs(model, tokenizer, chosen_prompts, temperature=temperature,
                           max_new_tokens=world.max_new_tokens, seed=seed + round_)
        if distinct:
            new = [p for p in new if pair_key(p) not in seen and not seen.add(pair_key(p))]
        pairs += new
        round_ += 1
        idle_rounds = 0 if new else idle_rounds + 1
        if idle_rounds == 20:
            raise RuntimeError(f"only {len(pairs)} of {n_pairs} pairs after {round_} rounds: "
                               "the model writes too few distinct completions; "
                               "raise the temperature or ask for fewer pairs")
    return pairs[:n_pairs]


def make_preference_dataset(world, model, tokenizer, labeler, n_pairs: int = 1000,
                            prompts=None, temperature: float = 1.0,
                            seed: int = 0) -> list[Comparison]:
    """``n_pairs`` comparisons of the model's own samples on ``prompts`` (default: the world's
    training prompts), labelled by a simulated ``labeler``: stage 1 without a human."""
    pairs = draw_pairs(world, model, tokenizer, n_pairs, prompts, temperature, seed, distinct=False)
    return simulate_comparisons(labeler, pairs)


# ---------------------------------------------------------------------------------------------
# Scores instead of comparisons: what a 1-10 scale loses (lesson 1, section 5)
# ---------------------------------------------------------------------------------------------

def score_session(labeler, items, scale: float = 1.0, offset: float = 0.0, drift: float = 0.0,
                  order_seed: int | None = None) -> list[int]:
    """The 1-10 scores one rater gives ``items`` ((prompt, text) pairs), each answer on its own,
    one after another (``SimulatedLabeler.score``, rounded and clipped)::

        s_t = clip(round(a * (u(x_t, y_t) + eps_t) + c + drift * t / (n - 1)), 1, 10)

    t: the answer's place in the session; a: ``scale`` (how widely they use the scale); c:
    ``offset`` (harsh or generous); ``drift``: how far their offset moves from the first answer
    to the last (< 0: harsher as they go). ``order_seed``: score the items in a shuffled order
    (None: as given); the scores come back in the order of ``items``. A comparison sees both
    answers at one moment, so an offset, drifting or not, cancels in s(A) - s(B).
    """
    n = len(items)
    order = list(range(n))
    if order_seed is not None:
        random.Random(order_seed).shuffle(order)
    scores = [0] * n
    for t, i in enumerate(order):
        prompt, text = items[i]
        c_t = offset + drift * t / max(n - 1, 1)
        scores[i] = min(10, max(1, round(labeler.score(prompt, text, scale, c_t))))
    return scores


def crowd_scores(world, items, criteria="helpful", items_per_rater: int = 4,
                 temperature: float = 1.0, seed: int = 0) -> tuple[list[int], list[int]]:
    """(scores, rater of each item): many raters, each scoring only ``items_per_rater`` of
    ``items`` (handed out at random, as a crowd-sourcing platform does), each with a scale
    a ~ U(0.5, 1.5) and an offset c ~ U(3, 7) of their own (``score_session`` without drift).
    The two answers of a pair are then almost always scored by two different raters."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    scores, raters = [0] * len(items), [0] * len(items)
    for r, start in enumerate(range(0, len(order), items_per_rater)):
        mine = order[start:start + items_per_rater]
        rater = SimulatedLabeler(world, criteria, temperature, seed=seed * 100_003 + r)
        given = score_session(rater, [items[i] for i in mine], rng.uniform(0.5, 1.5),
                              rng.uniform(3.0, 7.0))
        for i, s in zip(mine, given):
            scores[i], raters[i] = s, r
    return scores, raters


def normalise_per_rater(scores, raters) -> list[float]:
    """Each score as a z-score within its rater: (s - mean_r) / std_r (std_r = 1 where a rater
    gave one value). Removes a steady rater's offset c and scale a, if they scored enough items,
    and a fair spread of them, for mean_r and std_r to say something about the rater."""
    by_rater = {}
    for s, r in zip(scores, raters):
        by_rater.setdefault(r, []).append(s)
    moments = {}
    for r, values in by_rater.items():
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        moments[r] = (mean, std or 1.0)
    return [(s - moments[r][0]) / moments[r][1] for s, r in zip(scores, raters)]


def preferences_from_scores(scores) -> list[str | None]:
    """The comparisons that scores imply. ``scores``: the two answers of each pair in turn,
    [s(first of pair 1), s(second of pair 1), s(first of pair 2), ...]. For each pair "A" where
    its first answer scored higher, "B" where the second did, None on a tie (no preference)."""
    scores = list(scores)
    if len(scores) % 2:
        raise ValueError(f"preferences_from_scores needs two scores a pair, got {len(scores)}")
    return [None if a == b else ("A" if a > b else "B") for a, b in zip(scores[0::2], scores[1::2])]


def gold_agreement(world, pairs, picks, criteria="helpful") -> Estimate:
    """How often ``picks`` (one a pair: "A" the first answer, "B" the second, None no
    preference) chose the answer that gold prefers under ``criteria``, over the pairs whose two
    answers differ in gold; None counts as a coin flip (1/2: it tells a reward model nothing).
    With its 95% interval and n (``stats.accuracy``)."""
    hits, diffs = [], {}
    for pair, pick in zip(pairs, picks, strict=True):
        if pair not in diffs:       # pairs may repeat (several seeds of the same pairs)
            prompt, first, second = pair
            diffs[pair] = world.gold(prompt, first, criteria) - world.gold(prompt, second, criteria)
        diff = diffs[pair]
        if diff:
            hits.append(0.5 if pick is None else pick == ("A" if diff > 0 else "B"))
    return accuracy(hits)
