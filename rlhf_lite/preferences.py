"""Stage 1: the preference dataset.

The model writes several completions per prompt; a labeler sees two of them and says which one
they prefer. Pairs, not scores: two people's 1-10 scales differ (one is harsh, one generous),
but they agree far more often on *which* of two answers is better.

- pairs: ``sample_pairs`` / ``draw_pairs`` (distinct completions of the model's own samples);
- labels: ``label_store.py`` keeps every judgement on disk the moment it is made (the widget in
  ``widget.py`` writes to it); ``simulate_comparisons`` has a simulated labeler judge pairs;
- comparisons: a judgement as a ``Comparison`` (prompt, chosen, rejected), exported in the
  ``prompt`` / ``chosen`` / ``rejected`` layout that TRL and the ``datasets`` library use.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re

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


def write_trl_jsonl(comparisons, path) -> int:
    """Write ``to_trl(comparisons)`` as JSON Lines (what ``datasets.load_dataset("json", ...)``
    and TRL read); returns the number of rows. Written to a temporary file, fsynced, then renamed,
    so a reader never sees half an export, even after a crash. Refuses to overwrite a file of
    label events (a ``LabelStore``'s)."""
    rows = to_trl(comparisons)
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if re.match(rb'\{"id": \d+, "event": "(label|skip|undo)"', f.read(200)):
                raise ValueError(f"{path} holds label events (a LabelStore's file): the export "
                                 "would overwrite those labels. Export to another file")
    except FileNotFoundError:
        pass
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)
    try:   # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return len(rows)


def read_trl_jsonl(path, labeler: str = "imported") -> list[Comparison]:
    """``Comparison``s from a ``prompt``/``chosen``/``rejected`` JSON Lines file (``from_trl``)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    try:
        return from_trl(rows, labeler)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e} (row 0 is line 1)") from None
