"""Beyond PPO, part 2: best-of-n, reward over-optimisation measured against gold, and the
methods side by side.

**Best-of-n** (rejection sampling against the reward model): sample n completions from the base
policy, keep the one the reward model scores highest. No training at all, and its distance from
the base policy is known in closed form (Stiennon et al. 2020, appendix; Gao et al. 2022):

    KL(pi_bon || pi) = log n - (n - 1) / n

**Reward over-optimisation** (Gao, Schulman and Hilton 2022, "Scaling Laws for Reward Model
Over-optimization"). The reward model is a *proxy* for what the labelers want, fitted on a few
hundred pairs. Optimise against it harder and harder and its score keeps rising, while the true
("gold") utility rises, peaks and falls: the policy finds what the proxy over-rates. Measured
against the distance d = sqrt(KL(pi || pi_base)), the gold curves follow

    best-of-n:  R_bon(d) = d (alpha - beta d)          peak at d* = alpha / (2 beta)
    RL (PPO):   R_rl(d)  = d (alpha - beta ln d)       peak at d* = exp(alpha / beta - 1)

where R is the gain over the base policy. Both are linear in (alpha, beta), so least squares
has a closed form (``fit_gao``). Gao et al. had to train a 6B "gold" reward model to stand in
for humans; our world's judge *is* the gold (``World.gold_many``), never seen in training.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from .models import completion_logprobs, generate
from .stats import bootstrap_mean, win_rate


# ---------------------------------------------------------------------------------------------
# Best-of-n and its KL
# ---------------------------------------------------------------------------------------------

def bon_kl(n: int) -> float:
    """KL(pi_bon || pi) = log n - (n - 1) / n, in nats: 0 for n = 1, about log n - 1 for large n.

    Exact when no two samples tie (a continuous reward over a continuous space); for a discrete
    policy whose likely answers repeat it is an upper bound (Beirami et al. 2024), and the
    true KL is smaller: best-of-n cannot move mass onto an answer that already holds most of it.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_kl_exact(probs, scores, n: int) -> float:
    """The exact KL(pi_bon || pi) for a categorical pi over outcomes with distinct ``scores``.

    Sort outcomes by score; with F_i = P(score <= score_i), best-of-n picks outcome i with
    q_i = F_i^n - F_(i-1)^n (all n draws at most i, not all below it).
    KL = sum_i q_i log(q_i / p_i).
    """
    probs = torch.as_tensor(probs, dtype=torch.float64)
    order = torch.as_tensor(scores, dtype=torch.float64).argsort()
    cdf = probs[order].cumsum(0).clamp(max=1.0)
    q = cdf ** n - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** n
    keep = q > 0
    return float((q[keep] * (q[keep] / probs[order][keep]).log()).sum())


def score_texts(reward, prompts, texts, chunk: int = 1024) -> torch.Tensor:
    """Scores of (prompt, text) pairs by a ``RewardModel`` (its ``score``) or any function
    ``(prompts, completions) -> floats``, as a float tensor on the CPU, (B,).

    Each distinct pair is scored once: a small model's samples repeat a lot, so this is
    several times faster than scoring every sample.
    """
    fn = reward.score if hasattr(reward, "score") else reward
    if not callable(fn):
        raise TypeError("reward must be a RewardModel or a function "
                        "(prompts, completions) -> floats")
    if len(prompts) != len(texts):
        raise ValueError(f"got {len(prompts)} prompts but {len(texts)} texts; "
                         "give one prompt a text")
    pairs = list(zip(prompts, texts))
    distinct = list(dict.fromkeys(pairs))
    out = []
    for i in range(0, len(distinct), chunk):
        p, t = zip(*distinct[i:i + chunk])
        s = fn(list(p), list(t))
        out.append(s.detach().float().cpu() if torch.is_tensor(s)
                   else torch.tensor(list(s), dtype=torch.float))
    scores = torch.cat(out) if out else torch.zeros(0)
    index = {pair: k for k, pair in enumerate(distinct)}
    return scores[torch.tensor([index[pair] for pair in pairs], dtype=torch.long)]


def sample_candidates(model, tokenizer, prompts, n: int, max_new_tokens: int = 24,
                      temperature: float = 1.0, seed: int = 0,
                      max_batch: int = 1024) -> list[list[str]]:
    """n completions a prompt, as texts[i][j] (prompt i, draw j).

    Draws are batched, ``max_batch`` rows to a ``generate`` call, call c seeded ``seed + c``;
    so for n = 1 this is exactly ``generate(model, tokenizer, prompts, seed=seed)``.
    """
    prompts = list(prompts)
    per_call = max(1, max_batch // max(1, len(prompts)))
    draws = []
    for call, start in enumerate(range(0, n, per_call)):
        k = min(per_call, n - start)
        texts = generate(model, tokenizer, prompts * k, max_new_tokens, temperature,
                         seed=seed + call).texts
        draws += [texts[j * len(prompts):(j + 1) * len(prompts)] for j in range(k)]
    return [list(row) for row in zip(*draws)]


@dataclasses.dataclass
class BestOfN:
    """The result of best-of-n: the kept texts and everything they were chosen from."""
    prompts: list[str]
    texts: list[str]                  # (B,) the highest-scoring candidate a prompt
    scores: torch.Tensor              # (B,) its reward
    candidates: list[list[str]]       # (B, n)
    candidate_scores: torch.Tensor    # (B, n)

    @property
    def n(self) -> int:
        return self.candidate_scores.shape[1]

    @property
    def kl(self) -> float:
        return bon_kl(self.n)


def pick_best(candidates, scores) -> list[str]:
    """Best-of-n's choice: for each prompt i the candidate with the highest score,

        y_i = candidates[i][j*],   j* = argmax_j scores[i, j]     (the first of equal best)

    candidates: B lists of n texts; scores: (B, n). Returns the B kept texts.
    """
    return [row[j] for row, j in zip(candidates, torch.as_tensor(scores).argmax(1).tolist())]


@torch.no_grad()
def best_of_n(model, tokenizer, prompts, n: int, reward, max_new_tokens: int = 24,
              temperature: float = 1.0, seed: int = 0, pick=pick_best) -> BestOfN:
    """Sample n completions a prompt from ``model``, keep the one ``reward`` scores highest.

    reward: a ``RewardModel`` or a function ``(prompts, completions) -> floats``. With n = 1 it
    is plain sampling: the same texts as ``generate(model, tokenizer, prompts, seed=seed)``.
    pick: ``pick_best`` or a learner's own (checked by ``rlhf_lite.exercises.use``).
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    candidates = sample_candidates(model, tokenizer, prompts, n, max_new_tokens, temperature, seed)
    flat = score_texts(reward, [p for p in prompts for _ in range(n)],
                       [t for row in candidates for t in row])
    scores = flat.view(len(prompts), n)
    texts = list(pick(candidates, scores))
    kept = torch.tensor([row.index(t) for row, t in zip(candidates, texts)])
    kept_scores = scores.gather(1, kept[:, None]).squeeze(1)
    return BestOfN(list(prompts), texts, kept_scores, candidates, scores)


def empirical_bon_kl(prompts, candidates, reward, ns) -> list[float]:
    """The exact best-of-n KL of each prompt's *empirical* distribution (the pool's distinct texts,
    weighted by how often they were drawn, scored by ``reward``), averaged over prompts, for each
    n in ``ns``: how far ``bon_kl`` is from the truth for a model whose answers repeat.
    A plug-in estimate: it cannot exceed log(distinct texts), so trust it for n well below N."""
    out = [0.0] * len(ns)
    for prompt, row in zip(prompts, candidates):
        texts = sorted(set(row))
        probs = torch.tensor([row.count(t) for t in texts], dtype=torch.float64) / len(row)
        scores = score_texts(reward, [prompt] * len(texts), texts)
        for k, n in enumerate(ns):
            out[k] += bon_kl_exact(probs, scores, n) / len(prompts)
    return out


# ---------------------------------------------------------------------------------------------
# Over-optimisation: proxy and gold against d = sqrt(KL)
# ---------------------------------------------------------------------------------------------

def best_of_n_weights(N: int, n: int) -> torch.Tensor:
    """P(the i-th lowest of N samples is the best of a random n of them) = C(i, n-1) / C(N, n).

    Rank the pool by reward; a random n-subset has the i-th lowest as its best when it holds that
    sample and n - 1 of the i below it. Averaging with these weights over one pool of N samples
    gives an unbiased estimate of the best-of-n expectation for every n <= N at once.
    """
    if not 1 <= n <= N:
        raise ValueError(f"need 1 <= n <= N, got n={n}, N={N}")

    def log_comb(a, b):
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)
    return torch.tensor([math.exp(log_comb(i, n - 1) - log_comb(N, n)) if i >= n - 1 else 0.0
                         for i in range(N)], dtype=torch.float64)


def best_of_n_curve(prompts, candidates, reward, gold_fn, ns) -> dict:
    """Proxy and gold of best-of-n against d = sqrt(KL), for each n in ``ns``, from one pool.

    prompts: (B,); candidates: (B, N) texts from ``sample_candidates``; reward: the proxy;
    gold_fn: ``(prompts, completions) -> floats``, e.g. ``world.gold_many`` (only measured).
    Returns {"n", "kl", "d", "proxy", "gold", "win_rate", "win_rate_ci95"}: lists, one value
    per n (means over prompts; the interval bootstrapped over prompts), and "gold_by_prompt":
    for each n the B per-prompt expectations whose mean is "gold" (for intervals over prompts,
    e.g. ``stats.bootstrap_mean`` of the difference between two n). win_rate is
    P(gold of best-of-n > gold of a plain sample), ties 1/2, where the plain sample must be a
    draw *outside* the n that best-of-n chose from: the n - 1 it beat
    on the proxy are not fair opponents (they were picked against). With the pool ranked by
    the proxy and sample i the best of its subset S, an opponent j above i is always outside
    S, and one of the i below it is outside with probability 1 - (n - 1) / i, so

        win(i) = [sum_(j > i) beats(i, j) + (1 - (n - 1) / i) sum_(j < i) beats(i, j)] / (N - n)

    averaged with ``best_of_n_weights``. One pool of N cannot estimate it for n = N (no draw
    is left over): win_rate is NaN there.
    """
    B, N = len(candidates), len(candidates[0])
    if N < 2:
        raise ValueError("best_of_n_curve needs at least 2 candidates a prompt "
                         "(sample_candidates(..., n >= 2))")
    flat_prompts = [p for p in prompts for _ in range(N)]
    flat_texts = [t for row in candidates for t in row]
    proxy = score_texts(reward, flat_prompts, flat_texts).view(B, N).double()
    gold = torch.tensor(list(gold_fn(flat_prompts, flat_texts)), dtype=torch.float64).view(B, N)
    order = proxy.argsort(1)                              # rank the pool by the proxy
    proxy_sorted, gold_sorted = proxy.gather(1, order), gold.gather(1, order)
    beats = ((gold_sorted[:, :, None] > gold_sorted[:, None, :]).double()
             + 0.5 * (gold_sorted[:, :, None] == gold_sorted[:, None, :]).double())
    above = torch.ones(N, N, dtype=torch.float64).triu(1)          # [i, j] = 1 where j > i
    below = above.T
    beats_above, beats_below = (beats * above).sum(2), (beats * below).sum(2)   # (B, N)
    rank = torch.arange(N, dtype=torch.float64).clamp(min=1)
    curve = {key: [] for key in ("n", "kl", "d", "proxy", "gold", "gold_by_prompt", "win_rate",
                                 "win_rate_ci95")}
    for n in ns:
        w = best_of_n_weights(N, n)
        curve["n"].append(n)
        curve["kl"].append(bon_kl(n))
        curve["d"].append(math.sqrt(bon_kl(n)))
        curve["proxy"].append(float((proxy_sorted * w).sum(1).mean()))
        gold_by_prompt = (gold_sorted * w).sum(1)                  # (B,) E[gold of best-of-n]
        curve["gold"].append(float(gold_by_prompt.mean()))
        curve["gold_by_prompt"].append(gold_by_prompt.tolist())
        if n < N:
            win = (beats_above + (1 - (n - 1) / rank) * beats_below) / (N - n)
            estimate = bootstrap_mean((win * w).sum(1).tolist(), list(range(B)))  # over prompts
            curve["win_rate"].append(estimate.value)
            curve["win_rate_ci95"].append(estimate.ci95)
        else:
            curve["win_rate"].append(float("nan"))
            curve["win_rate_ci95"].append([float("nan"), float("nan")])
    return curve


def rl_curve(history) -> dict:
    """Proxy and gold against d = sqrt(KL) along a PPO run (its ``history``, logged with a gold_fn).

    KL is the run's per-iteration estimate of KL(pi || pi_ref) in nats per completion.
    """
    if not history or history[0].get("gold") is None:
        raise ValueError("rl_curve needs a PPO history logged with gold: "
                         "PPOTrainer(..., gold_fn=world.gold_many)")
    return {"iteration": [h["iteration"] for h in history],
            "kl": [h["kl"] for h in history],
            "d": [math.sqrt(max(h["kl"], 0.0)) for h in history],
            "proxy": [h["reward"] for h in history],
            "gold": [h["gold"] for h in history]}


@dataclasses.dataclass
class GaoFit:
    """A fitted Gao et al. form, R(d) = d (alpha - beta d) ("bon")
    or d (alpha - beta ln d) ("rl")."""
    form: str
    alpha: float
    beta: float

    def __call__(self, d):
        d = torch.as_tensor(d, dtype=torch.float64)
        shape = d * d if self.form == "bon" else torch.xlogy(d, d)   # x log x -> 0 at 0
        return (self.alpha * d - self.beta * shape).tolist()

    @property
    def peak_d(self) -> float:
        """Where R(d) is highest: alpha / (2 beta) or exp(alpha / beta - 1);
        inf if it never turns."""
        if self.beta <= 0:
            return math.inf
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        return math.exp(min(self.alpha / self.beta - 1, 50))


def fit_gao(d, r, form: str = "bon") -> GaoFit:
    """Least-squares fit of R(d) = alpha d - beta g(d), g = d^2 ("bon") or d ln d ("rl").

    R is the gain over the base policy (gold minus its value at d = 0). With f1 = d, f2 = -g(d)
    the normal equations [f1.f1 f1.f2; f1.f2 f2.f2] [alpha; beta] = [f1.r; f2.r]
    solve in closed form.
    """
    if form not in ("bon", "rl"):
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")
    d = torch.as_tensor(d, dtype=torch.float64)
    r = torch.as_tensor(r, dtype=torch.float64)
    if len(d) != len(r) or len(d) < 2:
        raise ValueError(f"need at least 2 points and as many d as R, "
                         f"got {len(d)} d and {len(r)} R")
    f1, f2 = d, -(d * d if form == "bon" else torch.xlogy(d, d))
    a11, a12, a22 = (f1 * f1).sum(), (f1 * f2).sum(), (f2 * f2).sum()
    b1, b2 = (f1 * r).sum(), (f2 * r).sum()
    det = a11 * a22 - a12 * a12
    if det.abs() < 1e-12:
        raise ValueError("the points do not determine both alpha and beta "
                         "(need at least two distinct d > 0)")
    return GaoFit(form, float((a22 * b1 - a12 * b2) / det), float((a11 * b2 - a12 * b1) / det))


def plot_overoptimisation(curve, fit: GaoFit | None = None, ax=None, title: str = "",
                          label: str = "", runs=()):
    """Gold gain (left axis, the judge's units) and proxy gain (right axis, the reward model's
    units: standard deviations of its scores on base-model samples) over d = 0, against
    d = sqrt(KL), and the fitted gold form if given. Two axes, because the two scores are in
    different units; both zeros sit at the same height, so "above the base policy" reads the same.

    Points are joined by lines when d only grows (best-of-n over growing n); a PPO run's KL goes
    up and down, so its iterations are drawn as points. runs: the same curve's single runs
    (other seeds) when ``curve`` is their mean: their gold gains are drawn thin behind it.
    Returns the gold axis; the proxy's is ``ax.proxy_axis``.
    """
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    d = curve["d"]
    joined = all(b >= a for a, b in zip(d, d[1:]))
    proxy_axis = ax.twinx()
    proxy_gain = [p - curve["proxy"][0] for p in curve["proxy"]]
    gold_gain = [g - curve["gold"][0] for g in curve["gold"]]
    proxy_line, = proxy_axis.plot(d, proxy_gain, "o-" if joined else "o", ms=3, color="tab:blue",
                                  label=f"proxy {label} (right axis)".replace("  ", " "))
    gold_line, = ax.plot(d, gold_gain, "s-" if joined else "s", ms=3, color="tab:orange",
                         label=f"gold {label} (left axis)".replace("  ", " "))
    handles = [proxy_line, gold_line]
    for run in runs:
        run_gain = [g - run["gold"][0] for g in run["gold"]]
        gold_gain += run_gain                                    # inside the limits below
        thin, = ax.plot(run["d"], run_gain, "-", color="tab:orange", lw=0.8, alpha=0.35,
                        label=f"gold, each of {len(runs)} seeds")
    if runs:
        handles.append(thin)
    if fit is not None:
        grid = torch.linspace(0, max(d), 100)
        shape = "d" if fit.form == "bon" else "ln d"
        fit_line, = ax.plot(grid, fit(grid), "--", color="tab:orange",
                            label=f"fit {fit.form}: d({fit.alpha:.2f} - {fit.beta:.2f} {shape})")
        handles.append(fit_line)
    ax.axhline(0, color="grey", lw=0.5)
    for axis, values in ((ax, gold_gain), (proxy_axis, proxy_gain)):
        low, high = min(0.0, *values), max(0.0, *values)
        pad = 0.08 * (high - low or 1.0)
        axis.set_ylim(low - pad, high + pad)
    _align_zeros(ax, proxy_axis)
    ax.set_xlabel("d = sqrt(KL) from the base policy")
    ax.set_ylabel("gold gain (judge's units)", color="tab:orange")
    proxy_axis.set_ylabel("proxy gain (reward-model units)", color="tab:blue")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, ncol=2, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, -0.2))                     # below: clear of both axes' points
    ax.proxy_axis = proxy_axis
    return ax


def _align_zeros(a, b):
    """Widen the y-limits of two axes sharing x so that y = 0 sits at the same height on both."""
    (a0, a1), (b0, b1) = a.get_ylim(), b.get_ylim()
    below = max(-a0 / (a1 - a0), -b0 / (b1 - b0))          # the share of the height under zero
    for axis, (lo, hi) in ((a, (a0, a1)), (b, (b0, b1))):
        if below > 0:
            lo = min(lo, -below / (1 - below) * hi) if below < 1 else lo
        axis.set_ylim(lo, hi)


# ---------------------------------------------------------------------------------------------
# The methods side by side: gold win-rate against the base model, and KL
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def sequence_kl(policy, reference, tokenizer, prompts, max_new_tokens: int = 24,
                seed: int = 0) -> float:
    """KL(pi || pi_ref) = E_(y ~ pi) [log pi(y|x) - log pi_ref(y|x)]:
    Monte Carlo, one sample a prompt."""
    batch = generate(policy, tokenizer, prompts, max_new_tokens, seed=seed)
    log_ratio = completion_logprobs(policy, batch) - completion_logprobs(reference, batch)
    return float(log_ratio.sum(1).mean())


def compare_methods(world, base, tokenizer, prompts, policies=None, best_of=None,
                    train_seconds=None, samples_per_prompt: int = 4, criteria="helpful",
                    seed: int = 0) -> list[dict]:
    """Each method's gold, gold win-rate against the base model and KL from it, on ``prompts``.

    policies: {name: fine-tuned model}; best_of: {name: (reward, n)} for best-of-n on ``base``;
    train_seconds: {name: seconds it took to train}. The base model's own samples (a different
    seed) are the opponent; a win is gold(method) > gold(base), a tie counts 1/2.
    Returns one dict a method: method, gold, win_rate (an ``Estimate``: value, 95% interval
    bootstrapped over prompts, n), kl, train_seconds, sample_seconds.
    """
    batch = [p for p in prompts for _ in range(samples_per_prompt)]
    n_tokens = world.max_new_tokens
    base_texts = generate(base, tokenizer, batch, n_tokens, seed=seed + 1).texts
    base_gold = world.gold_many(batch, base_texts, criteria)
    train_seconds = train_seconds or {}

    def row(name, texts, kl, seconds):
        gold = world.gold_many(batch, texts, criteria)
        return dict(method=name, gold=sum(gold) / len(gold), kl=kl,
                    win_rate=win_rate(gold, base_gold, groups=batch, seed=seed),
                    train_seconds=train_seconds.get(name, 0.0), sample_seconds=seconds)

    rows = []
    for name, model in {"base": base, **(policies or {})}.items():
        start = time.perf_counter()
        texts = generate(model, tokenizer, batch, n_tokens, seed=seed).texts
        seconds = time.perf_counter() - start
        kl = (0.0 if model is base
              else sequence_kl(model, base, tokenizer, batch, n_tokens, seed + 2))
        rows.append(row(name, texts, kl, seconds))
    for name, (reward, n) in (best_of or {}).items():
        start = time.perf_counter()
        result = best_of_n(base, tokenizer, batch, n, reward, n_tokens, seed=seed)
        rows.append(row(name, result.texts, result.kl, time.perf_counter() - start))
    return rows


def format_table(rows) -> str:
    """The rows of ``compare_methods`` as a plain-text table."""
    width = max([len("method")] + [len(r["method"]) for r in rows]) + 2
    lines = [f"{'method':<{width}}{'gold':>6}{'win rate [95% CI]':>20}{'KL (nats)':>11}"
             f"{'train s':>9}{'sample s':>10}"]
    for r in rows:
        w = r["win_rate"]
        interval = f"{float(w):.2f} [{w.low:.2f}, {w.high:.2f}]"
        lines.append(f"{r['method']:<{width}}{r['gold']:>6.2f}{interval:>20}{r['kl']:>11.2f}"
                     f"{r['train_seconds']:>9.1f}{r['sample_seconds']:>10.2f}")
    n = rows[0]["win_rate"] if rows else None
    if n is not None:
        lines.append(f"(win rates against the base model's samples: n = {n.n} pairs from "
                     f"{n.groups} held-out prompts each)")
    return "\n".join(lines)
