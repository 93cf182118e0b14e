"""Your taste: the criteria, in the judge's own terms, that explain your labels.

A reward model needs a thousand labels; a learner gives a few dozen. So we ask which weights of
the judge's features (``world.FEATURES``) would make a labeler choose as you chose, and a
stand-in labeler with *that* taste labels the pairs you did not. Prefer short answers, and the
stand-in prefers them too; the reward model and the policy follow.

The model is the simulated labelers' own (``world.SimulatedLabeler``), Bradley-Terry::

    P(chosen preferred over rejected) = sigmoid(w . d / T),    d = x(chosen) - x(rejected)

    symbol  shape  meaning
    x(y)    (K,)   the judge's features of answer y as ``Criteria.utility`` reads them (rude
                   and friendly capped at 2, length in words), and length_past_target: the
                   words past the preset's target_length, max(0, length - target_length)
    d_i     (K,)   x(chosen) - x(rejected) of your i-th label
    t_i     ()     1 for a preference; 1/2 for a tie (half a win each way, as the reward model)
    w       (K,)   your taste: utility per unit of each feature
    w0, s   (K,)   the prior: its centre, the preset you picked, and its widths (``PRIOR_STD``)
    T       ()     the noise temperature, the stand-in's (1)

MAP: w minimises the negative log posterior, a convex function of w::

    z_i  = w . d_i / T
    L(w) = -sum_i [t_i log sigmoid(z_i) + (1 - t_i) log sigmoid(-z_i)]
           + sum_k (w_k - w0_k)^2 / (2 s_k^2)
    g(w) = -sum_i (t_i - sigmoid(z_i)) d_i / T + (w - w0) / s^2
    H(w) =  sum_i sigmoid(z_i) (1 - sigmoid(z_i)) d_i d_i^T / T^2 + diag(1 / s^2)

Newton's step w <- w - H^-1 g, from w0, converges in a handful of steps. The prior is what
makes 20-40 labels enough: a feature your labels say little about keeps the preset's weight.
Laplace's approximation of the posterior is N(w_MAP, H^-1): a weight's 95% interval is
w_k +- 1.96 sqrt((H^-1)_kk).

- **Ties** pull w . d towards 0 (t = 1/2). **Both bad** is left out: "neither is acceptable"
  says nothing about which of the two is better (``reward_model.bradley_terry_loss`` agrees).
- **Length.** A preset charges ``length_cost`` per word past ``target_length`` (a hinge). Your
  taste has both a weight per word (``length``; the presets' is 0) and one per word past the
  preset's target (``length_past_target``; the presets' is -length_cost), so "shorter is
  better" and "rambling is bad" are both in reach. The fitted ``Criteria`` keeps the target and
  sets length_cost = -w[length_past_target], so its utility is exactly w . x.
- **Too few labels** (fewer than ``MIN_LABELS`` preferences and ties): no fit; the preset is the
  stand-in's criteria, and ``Taste.fitted`` is False and ``str(taste)`` says so.
- **How well it predicts you**: each of your labels with a preference predicted by the taste
  fitted without it (sign of w . d; 0 counts 1/2): leave-one-out up to ``LEAVE_ONE_OUT`` labels,
  10 folds beyond; with a Wilson interval.
"""
from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from .preferences import Comparison, pair_key, read_trl_jsonl, simulate_comparisons
from .stats import wilson_interval
from .world import FEATURES, Criteria, SimulatedLabeler, get_criteria

MIN_LABELS = 10
"""Fewer labels (preferences and ties) than this: the preset is used, not a fit."""

TASTE_FEATURES = FEATURES + ("length_past_target",)
"""What a taste weighs: the judge's features, and the words past the preset's target length."""

LEAVE_ONE_OUT = 100
"""Up to this many labels the held-out accuracy leaves one out at a time; beyond, 10 folds."""

PRIOR_STD = dict(correct=1.0, wrong=1.0, rude=1.0, friendly=1.0, evasive=1.0, on_topic=1.0,
                 complete_sentence=1.0, length=0.5, repetition=1.0, length_past_target=0.5)
"""s_k: how far (in utility per unit of the feature) your labels may move a weight before
they must say so loudly. Lengths are per word, and answers differ by several words."""

# x_k(y) is the utility of y under a criteria that weighs feature k alone: exactly what
# Criteria.utility reads (caps included), so the fitted criteria's utility is w . x.
_UNIT = {k: Criteria(k, {k: 1.0}, target_length=0, length_cost=0.0, guidelines="")
         for k in FEATURES}


def answer_features(world, prompt: str, text: str, target_length: int) -> np.ndarray:
    """x(y), (K,): the judge's features of ``text`` as ``Criteria.utility`` reads them, and the
    words past ``target_length`` as it charges them."""
    features = world.features(prompt, text)
    past = -Criteria("", {}, target_length, length_cost=1.0, guidelines="").utility(features)
    return np.array([_UNIT[k].utility(features) for k in FEATURES] + [past])


def prior_centre(preset) -> dict:
    """w0: the preset's weights, 0 per word, and -length_cost per word past its target."""
    preset = get_criteria(preset)
    weights = dict(preset.weights, length=0.0, length_past_target=-preset.length_cost)
    return {k: weights.get(k, 0.0) for k in TASTE_FEATURES}


def fit_weights(d, t, w0, s, temperature: float = 1.0, steps: int = 100):
    """(w_MAP, H^-1): the MAP weights and Laplace covariance for differences ``d`` (N, K) and
    targets ``t`` (N,), by Newton's method (the equations in the module docstring), each step
    halved until L falls (a full Newton step can overshoot where the labels are separable)."""
    def loss(w):   # -log sigmoid(z) = log(1 + e^-z), computed without overflow
        z = d @ w / temperature
        labels = t * np.logaddexp(0, -z) + (1 - t) * np.logaddexp(0, z)
        return labels.sum() + (((w - w0) / s) ** 2).sum() / 2

    def hessian(w):
        p = np.exp(-np.logaddexp(0, -(d @ w) / temperature))   # sigmoid(z)
        return p, (d.T * (p * (1 - p))) @ d / temperature ** 2 + np.diag(1.0 / s ** 2)

    w = np.array(w0, dtype=float)
    for _ in range(steps):
        p, H = hessian(w)
        step = np.linalg.solve(H, -d.T @ (t - p) / temperature + (w - w0) / s ** 2)
        size, before = 1.0, loss(w)
        while loss(w - size * step) > before and size > 1e-6:
            size /= 2
        w = w - size * step
        if np.abs(size * step).max() < 1e-9:
            break
    return w, np.linalg.inv(hessian(w)[1])


def _hits(margins) -> float:
    """Correct predictions among labels with these margins w . d: > 0 a hit, 0 half of one."""
    margins = np.asarray(margins)
    return float((margins > 0).sum() + 0.5 * (margins == 0).sum())


@dataclasses.dataclass
class Taste:
    """A labeler's taste fitted to their labels (or the preset, when they are too few).

    weights, std: per feature, w_MAP and sqrt((H^-1)_kk) (the prior's w0 and s when not fitted).
    accuracy: held-out accuracy (leave-one-out, or 10 folds) on the ``accuracy_n`` labels with a
    preference, with its 95% Wilson interval; preset_accuracy: the preset's on the same labels.
    """
    preset: Criteria
    weights: dict
    std: dict
    prior: dict
    n_labels: int
    fitted: bool
    accuracy: float = float("nan")
    accuracy_ci95: tuple = (float("nan"), float("nan"))
    accuracy_n: int = 0
    preset_accuracy: float = float("nan")
    preset_accuracy_ci95: tuple = (float("nan"), float("nan"))
    name: str = "your taste"

    @property
    def criteria(self) -> Criteria:
        """What the stand-in labels by: u = w . x exactly when fitted, else the preset itself."""
        if not self.fitted:
            return self.preset
        top = sorted(self.weights, key=lambda k: -abs(self.weights[k]))[:4]
        said = ", ".join(f"{k} {self.weights[k]:+.2f}" for k in top)
        return Criteria(self.name, {k: self.weights[k] for k in FEATURES},
                        target_length=self.preset.target_length,
                        length_cost=-self.weights["length_past_target"],
                        guidelines=f"Prefer as the {self.n_labels} labels did (strongest: {said}).")

    def interval(self, feature: str) -> tuple[float, float]:
        """The weight's 95% interval, w +- 1.96 std."""
        w, std = self.weights[feature], self.std[feature]
        return w - 1.96 * std, w + 1.96 * std

    def stand_in(self, world, temperature: float = 1.0, seed: int = 0) -> SimulatedLabeler:
        """The simulated labeler with this taste and the Bradley-Terry noise of temperature T."""
        return SimulatedLabeler(world, self.criteria, temperature=temperature, seed=seed,
                                name="stand-in")

    def __str__(self) -> str:
        if not self.fitted:
            head = (f"{self.n_labels} labels are too few to fit a taste ({MIN_LABELS} needed): "
                    f"the stand-in labels by the {self.preset.name} preset")
        else:
            head = (f"{self.name}, fitted on {self.n_labels} labels "
                    f"(prior: the {self.preset.name} preset)")
        rows = [head, f"  {'feature':18}{'weight':>8}  {'95% interval':>16}{self.preset.name:>10}"]
        for k in TASTE_FEATURES:
            low, high = self.interval(k)
            rows.append(f"  {k:18}{self.weights[k]:>+8.2f}  [{low:>+6.2f}, {high:>+6.2f}]"
                        f"{self.prior[k]:>+10.2f}")
        if self.fitted:
            how = "leave-one-out" if self.n_labels <= LEAVE_ONE_OUT else "10 folds"
            rows.append(_accuracy_line(f"predicts the held-out labels ({how})", self.accuracy,
                                       self.accuracy_ci95, self.accuracy_n))
        rows.append(_accuracy_line(f"the {self.preset.name} preset predicts them",
                                   self.preset_accuracy, self.preset_accuracy_ci95,
                                   self.accuracy_n))
        return "\n".join(rows)


def _accuracy_line(what, accuracy, ci, n) -> str:
    if not n:
        return f"{what}: no labels with a preference"
    return f"{what}: {accuracy:.0%} (95% interval {ci[0]:.0%}-{ci[1]:.0%}, n = {n})"


def fit_taste(world, comparisons, preset="helpful", temperature: float = 1.0,
              min_labels: int = MIN_LABELS, prior_std: dict = PRIOR_STD,
              name: str = "your taste") -> Taste:
    """Fit a labeler's taste to their ``comparisons`` (the module docstring has the maths).

    preset: the criteria they labeled by, the prior's centre. temperature: T, the stand-in's noise.
    min_labels: fewer preferences and ties than this, and the preset is used (``fitted`` False).
    """
    preset = get_criteria(preset)
    used = [c for c in comparisons if not c.both_bad]
    x = lambda c, text: answer_features(world, c.prompt, text, preset.target_length)  # noqa: E731
    d = np.array([x(c, c.chosen) - x(c, c.rejected) for c in used])
    d = d.reshape(-1, len(TASTE_FEATURES))
    t = np.array([0.5 if c.tie else 1.0 for c in used])
    prior = prior_centre(preset)
    w0, s = np.array(list(prior.values())), np.array([prior_std[k] for k in TASTE_FEATURES])
    decisive = t == 1.0
    n_decisive = int(decisive.sum())
    preset_hits = _hits(d[decisive] @ w0)   # the preset's utility is w0 . x
    common = dict(preset=preset, prior=prior, n_labels=len(used), accuracy_n=n_decisive, name=name,
                  preset_accuracy=preset_hits / n_decisive if n_decisive else float("nan"),
                  preset_accuracy_ci95=wilson_interval(preset_hits, n_decisive))
    if len(used) < min_labels:
        return Taste(weights=dict(prior), std=dict(zip(TASTE_FEATURES, s.tolist())), fitted=False,
                     **common)
    w, covariance = fit_weights(d, t, w0, s, temperature)
    # held out: each label with a preference predicted by the taste fitted without it
    folds = np.arange(len(used)) % (len(used) if len(used) <= LEAVE_ONE_OUT else 10)
    margins = []
    for fold in np.unique(folds[decisive]):
        out = folds == fold
        fitted = fit_weights(d[~out], t[~out], w0, s, temperature)[0]
        margins += list(d[out & decisive] @ fitted)
    hits = _hits(margins)
    std = np.sqrt(np.diag(covariance))
    return Taste(weights=dict(zip(TASTE_FEATURES, w.tolist())),
                 std=dict(zip(TASTE_FEATURES, std.tolist())), fitted=True,
                 accuracy=hits / n_decisive if n_decisive else float("nan"),
                 accuracy_ci95=wilson_interval(hits, n_decisive), **common)


# ---------------------------------------------------------------------------------------------
# Your labels, and the stand-in's for the rest: what the next stage trains on
# ---------------------------------------------------------------------------------------------

def read_labels(labels, labeler: str = "you") -> tuple[list[Comparison], str | None]:
    """(your comparisons, the criteria they were given under or None) from ``labels``: a label-store
    file or ``LabelStore`` (only the labels a person gave, not a simulated fill), a TRL
    ``prompt``/``chosen``/``rejected`` JSON Lines file (every row is yours), or a list of
    ``Comparison``. A label-store file that does not exist yet holds no labels."""
    from .label_store import LabelStore
    if isinstance(labels, (list, tuple)):
        return list(labels), None
    if not isinstance(labels, LabelStore):
        path = os.fspath(labels)
        first = ""
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
        if first and '"event"' not in first:   # not a label store's event: TRL rows
            return read_trl_jsonl(path, labeler=labeler), None
        labels = LabelStore(path)
    events, comparisons = labels.current_labels(), labels.comparisons()
    mine = [(e, c) for e, c in zip(events, comparisons) if not e.get("simulated")]
    criteria = collections.Counter(e["criteria"] for e, _ in mine if e.get("criteria"))
    return [c for _, c in mine], (criteria.most_common(1)[0][0] if criteria else None)


@dataclasses.dataclass
class TrainingLabels:
    """What the next stage trains on: your labels, and the stand-in's for the rest of the pairs.

    comparisons: in the pairs' order (your labels in their place); yours, stand_in: how many of
    each; taste: what the stand-in labels by; labeler: the stand-in (its criteria and noise give
    the noise ceiling and gold agreement in lesson 2).
    """
    comparisons: list
    yours: int
    stand_in: int
    taste: Taste
    labeler: SimulatedLabeler

    def metrics(self) -> dict:
        """metrics.json's ``labels``: {yours, stand_in, taste: {feature: weight}, taste_fitted}."""
        return dict(yours=self.yours, stand_in=self.stand_in,
                    taste={k: round(w, 4) for k, w in self.taste.weights.items()},
                    taste_fitted=self.taste.fitted)

    def __str__(self) -> str:
        by = "your taste" if self.taste.fitted else f"the {self.taste.preset.name} preset"
        return (f"{len(self.comparisons)} comparisons: {self.yours} are yours, {self.stand_in} the "
                f"stand-in's (it labels by {by})")


def training_labels(labels, world, pairs, preset=None, temperature: float = 1.0, seed: int = 0,
                    min_labels: int = MIN_LABELS) -> TrainingLabels:
    """Your labels (``read_labels``) plus a stand-in's for the rest of ``pairs``, the stand-in
    labelling by your taste fitted now: so a label you gave after "Run All" counts as soon as a
    later stage calls this. Pairs you skipped go to the stand-in. The total is ``len(pairs)``,
    or your count if larger (your labels on pairs not in ``pairs`` come first).

    preset: the prior's centre; default: the criteria your labels were given under, else helpful.
    """
    yours, given_under = read_labels(labels)
    taste = fit_taste(world, yours, preset or given_under or "helpful", temperature, min_labels)
    labeler = taste.stand_in(world, temperature, seed)
    mine = {pair_key((c.prompt, c.chosen, c.rejected)): c for c in yours}
    in_pairs = {pair_key(p) for p in pairs}
    room = max(0, len(pairs) - len(mine))
    todo = [p for p in pairs if pair_key(p) not in mine][:room]
    filled = iter(simulate_comparisons(labeler, todo))
    out = [c for key, c in mine.items() if key not in in_pairs]
    placed = set()
    for pair in pairs:
        key = pair_key(pair)
        if key in mine:
            if key not in placed:
                out.append(mine[key])
                placed.add(key)
        elif room:
            out.append(next(filled))
            room -= 1
    return TrainingLabels(out, yours=len(mine), stand_in=len(todo), taste=taste, labeler=labeler)
