"""Plots every lesson shares: a live training plot, a loss-curve helper, and tastes side by side.

``LivePlot`` redraws one figure in place in a notebook as training goes (d2l's Animator idea);
outside a notebook it only records, and ``save`` writes the final figure.
"""
from __future__ import annotations

import math
import time

import matplotlib.pyplot as plt
import numpy as np


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except ImportError:
        return False


class LivePlot:
    """One panel per metric, redrawn in a notebook as values come in.

    >>> plot = LivePlot(["reward", "kl"], title="PPO")
    >>> plot.update(step, reward=1.0, kl=0.1)
    >>> plot.finish()          # the last values drawn (trainers call it at the end of train)

    Drawing six panels takes about 0.2 s, as long as a PPO iteration on a CPU, so the figure is
    redrawn at most every ``min_seconds`` (and every ``every`` updates), and only in a notebook:
    elsewhere ``save`` draws it once.
    """

    def __init__(self, metrics, title: str = "", ncols: int = 3, every: int = 1,
                 xlabel: str = "step", min_seconds: float = 2.0):
        self.metrics, self.every, self.xlabel = list(metrics), every, xlabel
        self.min_seconds = min_seconds
        self.data = {m: ([], []) for m in self.metrics}
        ncols = min(ncols, len(self.metrics))
        nrows = math.ceil(len(self.metrics) / ncols)
        self.fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.8 * nrows), squeeze=False)
        self.axes = dict(zip(self.metrics, axes.flat))
        for ax in list(axes.flat)[len(self.metrics):]:
            ax.set_visible(False)
        if title:
            self.fig.suptitle(title)
        self._handle = None
        self._updates, self._drawn_at, self._stale = 0, -math.inf, False
        plt.close(self.fig)  # we display it ourselves, once

    def update(self, step, **values) -> None:
        for name, value in values.items():
            if name in self.data and value is not None:
                self.data[name][0].append(step)
                self.data[name][1].append(float(value))
        self._updates, self._stale = self._updates + 1, True
        if (self._updates % self.every == 0 and _in_notebook()
                and time.perf_counter() - self._drawn_at >= self.min_seconds):
            self.show()

    def finish(self) -> None:
        """Show the values that came in since the last redraw (in a notebook)."""
        if self._stale and _in_notebook():
            self.show()

    def show(self) -> None:
        """Draw the figure and display it, or update the one displayed (in a notebook)."""
        self.draw()
        from IPython.display import display
        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
        else:
            self._handle.update(self.fig)
        self._drawn_at, self._stale = time.perf_counter(), False

    def draw(self) -> None:
        """Redraw every panel from the values so far."""
        for name, ax in self.axes.items():
            ax.clear()
            xs, ys = self.data[name]
            ax.plot(xs, ys, color="tab:blue")
            ax.set_title(name)
            ax.set_xlabel(self.xlabel)
            ax.grid(alpha=0.3)
        self.fig.tight_layout()

    def save(self, path) -> None:
        self.draw()
        self.fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_curves(curves: dict, title: str = "", xlabel: str = "step", ax=None, smooth: int = 1):
    """Plot named curves ({name: values}) on one axis, optionally with a moving average."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        values = list(values)
        if smooth > 1 and len(values) >= smooth:
            values = [sum(values[i - smooth + 1:i + 1]) / smooth
                      for i in range(smooth - 1, len(values))]
            ax.plot(range(smooth - 1, smooth - 1 + len(values)), values, label=name)
        else:
            ax.plot(values, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    return ax


def plot_tastes(tastes: dict, ax=None, features=None):
    """Tastes side by side: {name: a ``taste.Taste`` (its weights with their 95% intervals; hollow
    when left at its preset, too few labels) or a {feature: weight} dict (a preset, no interval)}.
    """
    first = next(iter(tastes.values()))
    features = list(features or getattr(first, "weights", first))
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.15 * len(features) * max(3, len(tastes)) + 1.5))
    height = 0.8 / len(tastes)
    for i, (name, taste) in enumerate(tastes.items()):
        y = np.arange(len(features)) + (i - (len(tastes) - 1) / 2) * height
        weights = getattr(taste, "weights", taste)
        half = [1.96 * taste.std[k] for k in features] if hasattr(taste, "std") else None
        fitted = getattr(taste, "fitted", True)
        ax.barh(y, [weights[k] for k in features], height, xerr=half, capsize=2,
                error_kw=dict(lw=0.8, ecolor="gray"), fill=fitted, edgecolor=f"C{i}", color=f"C{i}",
                label=name if fitted else f"{name} (too few labels: the preset)")
    ax.set_yticks(range(len(features)), features)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("weight: utility per unit of the feature (lengths: per word; bars: 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return ax
