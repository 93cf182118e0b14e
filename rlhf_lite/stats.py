"""Uncertainty: every accuracy and win rate the package reports comes with a 95% interval.

- An **accuracy** is k successes in n independent trials. Its 95% interval is Wilson's score
  interval (Wilson 1927), which, unlike p +- 1.96 sqrt(p(1-p)/n), stays inside [0, 1] and is
  honest for small n or p near 0 or 1::

      centre = (p + z^2 / 2n) / (1 + z^2 / n)
      half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)          z = 1.96

- A **win rate** compares several samples per prompt, and samples of one prompt are not
  independent (an easy prompt is easy for every sample). Its interval comes from the
  **bootstrap over prompts** (Efron 1979): draw the prompts again with replacement, recompute
  the win rate, and take the 2.5% and 97.5% quantiles of many such redraws.

``Estimate`` carries a value, its interval and the number of samples behind it; it formats as
the value (``f"{e:.2f}"``) and prints as ``0.86 [0.81, 0.90] (n=280, 35 prompts)``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

Z95 = 1.959964


@functools.total_ordering
@dataclasses.dataclass(frozen=True)
class Estimate:
    """A measured share with its 95% interval: ``value``, ``low``, ``high``, ``n`` samples
    (``groups``: the prompts they come from, when they were bootstrapped over prompts)."""
    value: float
    low: float
    high: float
    n: int
    groups: int | None = None

    @property
    def ci95(self) -> list[float]:
        return [self.low, self.high]

    def __float__(self) -> float:
        return float(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec) if spec else str(self)

    def __str__(self) -> str:
        where = f", {self.groups} prompts" if self.groups is not None else ""
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n}{where})"

    def __eq__(self, other) -> bool:
        if isinstance(other, Estimate):
            return dataclasses.astuple(self) == dataclasses.astuple(other)
        return self.value == float(other)

    def __lt__(self, other) -> bool:
        return self.value < float(other)

    __hash__ = object.__hash__

    # arithmetic reads the value, so ``ceiling - accuracy`` works as on a float
    def __add__(self, other): return self.value + float(other)          # noqa: E704
    def __radd__(self, other): return float(other) + self.value         # noqa: E704
    def __sub__(self, other): return self.value - float(other)          # noqa: E704
    def __rsub__(self, other): return float(other) - self.value         # noqa: E704
    def __mul__(self, other): return self.value * float(other)          # noqa: E704
    def __rmul__(self, other): return float(other) * self.value         # noqa: E704
    def __truediv__(self, other): return self.value / float(other)      # noqa: E704


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion successes / n (see the module docstring)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(correct) -> Estimate:
    """The share of True in ``correct`` (bools or 0/1; 1/2 counts half), with Wilson's interval."""
    values = [float(c) for c in correct]
    if not values:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    k = sum(values)
    return Estimate(k / len(values), *wilson_interval(k, len(values)), len(values))


def bootstrap_mean(values, groups, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """The mean of ``values`` with a 95% interval from the bootstrap over ``groups`` (one group
    label a value, e.g. its prompt): redraw whole groups with replacement ``n_boot`` times."""
    values = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    if len(values) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0)
    if len(groups) != len(values):
        raise ValueError(f"bootstrap_mean got {len(values)} values but {len(groups)} group labels")
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    which = torch.tensor([index[g] for g in groups])
    G = len(index)
    sums = torch.zeros(G, dtype=torch.float64).index_add_(0, which, values)
    counts = torch.zeros(G, dtype=torch.float64).index_add_(0, which, torch.ones_like(values))
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(G, (n_boot, G), generator=generator)
    means = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Estimate(float(values.mean()), low, high, len(values), G)


def win_rate(ours, theirs, groups, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """P(ours > theirs) over paired scores, ties counting 1/2, with the bootstrap interval over
    ``groups`` (the prompt of each pair). The one head-to-head rule every comparison uses."""
    ours, theirs = list(ours), list(theirs)
    if len(ours) != len(theirs):
        raise ValueError(f"win_rate got {len(ours)} scores against {len(theirs)}; "
                         "give one opponent a score")
    wins = [(a > b) + 0.5 * (a == b) for a, b in zip(ours, theirs)]
    return bootstrap_mean(wins, groups, n_boot, seed)
