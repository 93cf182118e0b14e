"""Critic-free RL: RLOO and GRPO, PPO without the value model (where the field went in 2024).

PPO trains a second network, the critic V(s_t), to tell a good completion from a lucky one.
RLOO and GRPO drop it: they sample k completions y_1 ... y_k of the same prompt x and let the
group be the baseline. Everything else is PPO's (``ppo.py``): generation, log-probs, the KL,
the reward's scoring and normalisation, the clipped ratio, the log and ``train()``. What differs
is here: no value model, k samples a prompt, advantages from the group, how the loss is averaged.

Symbols (k = samples_per_prompt, B = episodes in a batch, C = max_new_tokens; the rest as in
``ppo.py``; i and j run over the k completions of one prompt):

    symbol    shape   meaning
    R_i       (B,)    the sequence reward of y_i: score(x, y_i) - beta * sum_t k1_t with the KL
                      in the reward (RLOO, as Ahmadian et al. and TRL), score(x, y_i) with the KL
                      in the loss (GRPO)
    A_i       (B,)    its advantage; every token of y_i gets the same one: A_{i,t} = A_i
    |y_i|             real tokens of y_i (<eos> included)

The baselines:

    RLOO      A_i = R_i - 1/(k-1) sum_(j != i) R_j   = k/(k-1) (R_i - mean_j R_j)
    GRPO      A_i = (R_i - mean_j R_j) / (std_j R_j + eps)
    Dr. GRPO  A_i =  R_i - mean_j R_j

RLOO's baseline leaves y_i out, so it does not depend on y_i and the gradient stays unbiased
(Ahmadian et al. 2024, "Back to Basics"). GRPO (Shao et al. 2024, DeepSeekMath) also divides by
the group's std; Liu et al. (2025, "Understanding R1-Zero-Like Training", Dr. GRPO) showed that
this gives a group whose answers barely differ (a question too easy or too hard) as much weight
as one that tells good from bad, and dropped it.

The loss is PPO's clipped ratio with A_{i,t} = A_i (``ppo.policy_loss``), plus, for GRPO, beta
times a per-token KL estimate kl_{i,t} as a loss term (``ppo.kl_loss``: k2 here, k3 in the paper;
see there why k1 belongs in the reward and k2 or k3 in the loss):

    l_{i,t} = -min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps, 1 + eps) A_i) + beta kl_{i,t}

Which KL (``GRPOConfig.kl_estimator``). The paper's k3, differentiated as a loss, pulls along
grad KL(pi_ref || pi), the *other* direction (``ppo.kl_loss``; Tang and Munos 2025; K. Liu et al.
2025, "Rethinking KL Regularization in RLHF"). That KL keeps the policy spread over every answer
the reference gives, wrong ones included, yet barely minds text the reference would never
write. On our world, at the same beta, GRPO with k3 wins fewer gold comparisons than with k2
(about 0.76 against 0.85 to 0.88 in lesson 5), and with beta = 0.1 it drifts past 10 nats into
phrases the reward model over-rates ("Sure! Sure! ..."). k2 in the loss has, on-policy, the
gradient of k1 in the reward (K. Liu et al. 2025): the KL(pi || pi_ref) that PPO and RLOO
penalise. So k2 here; ``kl_estimator="k3"`` gives the paper's.

And ``loss_aggregation`` says how the l_{i,t} of the n completions of a minibatch become one
number (``aggregate``):

    "sequence"  L = 1/n sum_i 1/|y_i| sum_t l_{i,t}     GRPO: every completion weighs the same
    "token"     L = sum_i sum_t l_{i,t} / sum_i |y_i|   DAPO (Yu et al. 2025) and PPO: every token
    "constant"  L = 1/n sum_i sum_t l_{i,t} / C         Dr. GRPO: a fixed divisor

With "sequence", a token of a long completion gets 1/|y_i| of the push: a long wrong answer
(A_i < 0) is discouraged less per token than a short one, so wrong answers drift longer (Liu
et al. 2025). "constant" and "token" do not depend on the completion's own length.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import sys
import threading
import time

import torch

from .ppo import PPOConfig, PPOTrainer, masked_mean


# ---------------------------------------------------------------------------------------------
# The pieces, each with its equation
# ---------------------------------------------------------------------------------------------

def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - 1/(k-1) sum_(j != i) R_j: each completion against the mean of the others.

    rewards: (G, k), a row per prompt. Returns (G, k).
    """
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("RLOO's leave-one-out baseline needs samples_per_prompt >= 2, got 1")
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def grpo_advantages(rewards: torch.Tensor, scale_by_std: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """A_i = (R_i - mean_j R_j) / (std_j R_j + eps); without ``scale_by_std`` (Dr. GRPO) the
    division is dropped. std is the sample std (n - 1), as in TRL. rewards: (G, k) -> (G, k).
    A group whose k rewards are all equal gets A = 0: it teaches nothing."""
    centred = rewards - rewards.mean(1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(1, keepdim=True) + eps)


def aggregate(x: torch.Tensor, mask: torch.Tensor, how: str = "token",
              max_tokens: int | None = None) -> torch.Tensor:
    """Per-token loss terms (n, C) to one number: "sequence" (GRPO), "token" (DAPO, PPO) or
    "constant" (Dr. GRPO, divisor ``max_tokens``), as in the module docstring."""
    if how == "token":
        return masked_mean(x, mask)
    per_completion = (x * mask).sum(1)
    if how == "sequence":
        return (per_completion / mask.sum(1).clamp(min=1)).mean()
    if how == "constant":
        return (per_completion / max_tokens).mean()
    raise ValueError(f"loss_aggregation must be 'sequence', 'token' or 'constant', got {how!r}")


def verifiable_reward(world):
    """A rule as the reward (RL with verifiable rewards: Tulu 3, Lambert et al. 2024; DeepSeek-R1):
    1 if the completion states the right answer (the judge's ``correct`` feature), else 0.

    No labels and no reward model: a rule checks the answer, as a unit test checks code or an
    exact match checks a maths answer. It says nothing about tone, length or false extras.
    Returns ``reward_fn(prompts, completions) -> floats`` for any trainer.
    """
    def correct(prompts, completions) -> list[float]:
        return [world.features(p, c)["correct"] for p, c in zip(prompts, completions)]
    return correct


# ---------------------------------------------------------------------------------------------
# Configuration: PPOConfig's fields, with what the critic-free methods add or set differently
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class CriticFreeConfig(PPOConfig):
    """PPOConfig's fields (see there), with defaults tuned for critic-free runs on the tiny
    model. The critic's fields (value_coef, clip_range_value, value_init, gamma, lam,
    whiten_advantages) are not used: there is no critic."""
    samples_per_prompt: int = 4
    """k, completions sampled per prompt (the group); 2 to 16 here, 8 to 64 on maths tasks."""
    batch_size: int = 64
    """Episodes per iteration, batch_size / k prompts of k completions each; 32 to 512."""
    learning_rate: float = 5e-4
    """Adam step size for the policy; 1e-6 to 1e-5 for large models; 1e-4 to 1e-3 here."""
    adaptive_kl: bool = False
    """Adapt beta towards target_kl; RLOO and GRPO keep beta fixed (False)."""
    loss_aggregation: str = "token"
    """How per-token losses become one number: "sequence" (GRPO), "token" (DAPO, PPO) or
    "constant" (Dr. GRPO); see ``aggregate``."""

    def __post_init__(self):
        super().__post_init__()
        if self.samples_per_prompt < 2 or self.batch_size % self.samples_per_prompt:
            raise ValueError(f"{type(self).__name__}: samples_per_prompt must be >= 2 and divide "
                             f"batch_size; got {self.samples_per_prompt} and {self.batch_size}")
        if self.loss_aggregation not in ("sequence", "token", "constant"):
            raise ValueError(f"{type(self).__name__}.loss_aggregation must be 'sequence', 'token' "
                             f"or 'constant', got {self.loss_aggregation!r}")


@dataclasses.dataclass
class RLOOConfig(CriticFreeConfig):
    """RLOO (Ahmadian et al. 2024): the KL in the reward as k1 summed over the completion, as
    in the paper and TRL (PPOConfig's kl_in="reward", kl_estimator="k1")."""
    kl_coef: float = 0.1
    """beta, the weight of the KL penalty in the sequence reward; 0.01 to 0.3 (TRL: 0.05)."""
    steps: int = 60
    """Iterations. An RLOO iteration costs about half a PPO one (no critic to train), so 60 take
    no longer than PPO's 40 (22 s against 27 s in benchmarks/bench_critic_free.py, which also
    prints each method's gold win rate: RLOO's moves with the base model, 0.73 to 0.88)."""


@dataclasses.dataclass
class GRPOConfig(CriticFreeConfig):
    """GRPO (Shao et al. 2024), with Dr. GRPO (Liu et al. 2025) one switch away."""
    kl_coef: float = 0.3
    """beta, the weight of the KL loss term (a per-token mean); 0.01 to 0.3 (DeepSeekMath: 0.04)."""
    kl_in: str = "loss"
    """GRPO puts the KL in the loss (see ``ppo.kl_loss``), not in the reward."""
    kl_estimator: str = "k2"
    """"k2" pulls along grad KL(pi || pi_ref), the KL PPO and RLOO penalise; "k3" is the paper's
    (see "Which KL" in the module docstring)."""
    loss_aggregation: str = "sequence"
    """GRPO's per-completion mean; "token" is DAPO's; Dr. GRPO sets "constant"."""
    scale_by_std: bool = True
    """Divide each group's advantages by its std (GRPO); False keeps A_i = R_i - mean_j R_j."""
    dr_grpo: bool = False
    """Dr. GRPO (Liu et al. 2025): sets scale_by_std=False and loss_aggregation="constant"."""

    def __post_init__(self):
        if self.dr_grpo:
            self.scale_by_std, self.loss_aggregation = False, "constant"
        super().__post_init__()


# ---------------------------------------------------------------------------------------------
# The trainers: PPOTrainer with the critic taken out
# ---------------------------------------------------------------------------------------------

class CriticFreeTrainer(PPOTrainer):
    """``PPOTrainer`` without the value model: k completions a prompt, advantages from the
    group (``group_advantages``). Same arguments, same ``train()``, ``history`` and log, with
    ``zero_std_fraction`` (the share of groups whose k scores are all equal) in place of the
    critic's explained variance."""
    config_class = CriticFreeConfig

    def make_value_model(self, policy, reward):
        return None                                        # the point of the method

    def episode_prompts(self) -> list[str]:
        """batch_size / k prompts (different ones while there are enough), each k times in a row."""
        k = self.config.samples_per_prompt
        n = self.config.batch_size // k
        chosen = (self.rng.sample(self.prompts, n) if n <= len(self.prompts)
                  else [self.rng.choice(self.prompts) for _ in range(n)])
        return [prompt for prompt in chosen for _ in range(k)]

    def group_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def advantages(self, rewards, values, mask):
        """A_{i,t} = A_i on every real token; no value targets (there is no critic)."""
        sequence_rewards = rewards.sum(1)                  # R_i: score - beta sum_t k1_t, or score
        k = self.config.samples_per_prompt
        advantages = self.group_advantages(sequence_rewards.view(-1, k)).reshape(-1)
        return advantages[:, None] * mask, None

    def aggregate(self, x, mask):
        return aggregate(x, mask, self.config.loss_aggregation, self.config.max_new_tokens)

    def chunk_weight(self, tokens, chunk_mask, minibatch_mask):
        """Per-completion aggregations are means over completions: a chunk weighs its rows. In a
        data-parallel run every process holds n / W rows of a minibatch of n, so DDP's average
        of the processes' gradients is the gradient of the mean over all n (``parallel``)."""
        if self.config.loss_aggregation == "token":
            return tokens
        return torch.tensor(len(chunk_mask) / len(minibatch_mask))

    def diagnostics(self, ro) -> dict:
        groups = ro.scores.view(-1, self.config.samples_per_prompt)
        return {"zero_std_fraction": float((groups.std(1) < 1e-6).float().mean())}


class RLOOTrainer(CriticFreeTrainer):
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024) with PPO's clipped ratio."""
    name, stage = "RLOO", "rloo"
    config_class = RLOOConfig

    def group_advantages(self, rewards):
        return rloo_advantages(rewards)


class GRPOTrainer(CriticFreeTrainer):
    """Group Relative Policy Optimisation (Shao et al. 2024); Dr. GRPO with ``dr_grpo=True``."""
    name, stage = "GRPO", "grpo"
    config_class = GRPOConfig

    def group_advantages(self, rewards):
        return grpo_advantages(rewards, self.config.scale_by_std)


METHODS = {"ppo": PPOTrainer, "rloo": RLOOTrainer, "grpo": GRPOTrainer}
"""The RL methods by the name ``rlhf-lite pipeline --method`` takes; each has ``config_class``."""

PLOT_METRICS = ("reward", "gold", "kl", "entropy", "clipfrac", "zero_std_fraction")
"""The panels of a live critic-free plot: ``LivePlot(PLOT_METRICS, xlabel="episodes")``."""


# ---------------------------------------------------------------------------------------------
# What a method costs in memory, on any machine
# ---------------------------------------------------------------------------------------------

def held_bytes(trainer) -> dict:
    """Bytes of the tensors a trainer holds between steps: the models' parameters (policy,
    reference, critic, reward model) and the optimiser's state (Adam keeps two numbers a
    trained parameter). What a critic costs at any scale, independent of the machine."""
    def size(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)
    reward = getattr(trainer.reward, "model", None)
    models = {"policy": trainer.policy, "reference": trainer.reference,
              "critic": trainer.value_model, "reward model": reward}
    held = {name: size(m.parameters()) if m is not None else 0 for name, m in models.items()}
    held["optimizer state"] = size(t for state in trainer.optimizer.state.values()
                                   for t in state.values() if torch.is_tensor(t))
    return held


def peak_rss_growth(fn, every: float = 0.005):
    """Run ``fn()`` and return (its result, the peak growth of this process's resident memory
    while it ran, in bytes). On Linux a thread reads /proc/self/statm every ``every`` seconds,
    after memory freed earlier is handed back to the system (glibc's malloc_trim), so that it
    does not hide this run's growth; elsewhere it is the growth of the lifetime peak (ru_maxrss),
    0 if an earlier peak was higher (NaN on Windows). A CPU measure of all the process touched."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass                                               # not glibc: nothing to hand back
    statm = "/proc/self/statm"
    if not os.path.exists(statm):
        try:
            import resource                                # Unix only
        except ImportError:
            return fn(), float("nan")                      # no measure on this system
        unit = 1 if sys.platform == "darwin" else 1024     # ru_maxrss: bytes on macOS, else KiB
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        return result, unit * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start)

    def rss() -> int:
        with open(statm) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start, peak, done = rss(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(every)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
    return result, max(peak[0], rss()) - start
