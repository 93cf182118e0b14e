"""Stage 3: PPO against the reward model (the RL step of InstructGPT), in one file.

The RL view (seed, section 4): the **agent** is the policy (our language model), the
**environment** is the reward model, the **state** s_t is the context so far (prompt x and the
tokens y_<t written so far), an **action** is the next token y_t, and the episode ends at <eos>.
The reward model scores the finished completion once; a per-token KL penalty keeps the policy
near the frozen reference (the base model), so it cannot drift into text the reward model has
never seen and happens to over-rate:

    r_t = -beta * kl_t                       for every completion token t
    r_T = -beta * kl_T + score(x, y)         on the last token T (Ziegler et al. 2019)
    kl_t = log pi(y_t | s_t) - log pi_ref(y_t | s_t)          (the "k1" estimator)

Symbols and shapes (B = episodes in a batch, C = completion tokens):

    symbol              shape   meaning
    x, y                        prompt, completion (one episode)
    m_t                 (B, C)  1 on real completion tokens (<eos> included), 0 on padding
    logp_t              (B, C)  log pi(y_t | s_t) at the sampling temperature
    logp_ref_t          (B, C)  the same under the frozen reference policy
    score               (B,)    reward model's score of (x, y), normalised (or reward_fn's)
    r_t                 (B, C)  per-token reward, as above
    V_t                 (B, C)  value model's estimate of the return from s_t
    A_t                 (B, C)  advantage (GAE), R_t = A_t + V_t the value target
    rho_t               (B, C)  exp(logp_t - logp_old_t): new policy over the sampling policy

One iteration: sample B completions (``generate``, which keeps each token's log-prob: logp_old),
score them, compute logp_ref and V_old once under no_grad, rewards and advantages, then
``ppo_epochs`` passes of minibatch updates of the clipped losses. In a data-parallel run
(``parallel``) each process samples and trains on its share of the B episodes; token means and
batch statistics still cover all of them (``token_share``, ``batch_mean``). Each implementation
detail is a field of ``PPOConfig`` that can be switched off, so a lesson can show what happens
without it. Sources: Schulman et al. 2017 (PPO), Ziegler et al. 2019 ("Fine-Tuning Language
Models from Human Preferences"), Huang et al. 2024 ("The N Implementation Details of RLHF with
PPO"), Schulman 2020 ("Approximating KL Divergence", http://joschu.net/blog/kl-approx.html).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import os
import random
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from . import parallel
from .callbacks import log_step
from .models import (Completions, autocast, completion_logprobs, fused, generate,
                     mixed_precision, position_ids)
from .reward_model import completion_columns
from .stats import Estimate, win_rate

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PPOConfig:
    steps: int = 40
    """PPO iterations (one batch of episodes each). Tens on the tiny model; hundreds on a GPU."""
    batch_size: int = 64
    """Episodes (prompt + sampled completion) per iteration; usually 32 to 512."""
    minibatch_size: int = 64
    """Episodes per gradient step; batch_size / minibatch_size steps per epoch. 8 to batch_size
    (the default, one step an epoch, is TRL's num_mini_batches=1: largest matrices, fastest on
    a CPU)."""
    ppo_epochs: int = 4
    """Passes over each batch; 1 to 4 (more reuses samples harder, and clips more)."""
    learning_rate: float = 5e-4
    """Adam step size for policy and value model. 1e-6 to 1e-5 for big models; 1e-4 to 1e-3 here."""
    max_new_tokens: int = 24
    """Longest completion; a completion cut here has no <eos> (see missing_eos_penalty)."""
    temperature: float = 1.0
    """Sampling temperature; 0.7 to 1. Log-probs are computed at the same temperature."""
    kl_coef: float = 0.1
    """beta, the initial weight of the per-token KL penalty; 0.01 to 0.3 (TRL: 0.05). 0 turns it
    off. TRL's 0.05 measured no better here: over six tiny pipeline runs (seeds 0-2 on one and
    on two threads) the gold win rate averaged 0.857 against 0.1's 0.869; on the small preset it
    led on seeds 0-2 (0.919 against 0.889) but not on fresh seeds 3-5 (0.890 against 0.911)."""
    kl_in: str = "reward"
    """Where the KL penalty acts: "reward" (-beta * k1 in every token's reward; Ziegler et al.
    2019, InstructGPT) or "loss" (beta * mean k3 added to the loss; GRPO). See ``kl_loss``."""
    kl_estimator: str = "k1"
    """Per-token KL estimate (Schulman 2020; see ``kl_penalty``): "k1" in the reward; "k3"
    (GRPO) or "k2" in the loss. Other pairings are refused: they do not pull towards pi_ref."""
    adaptive_kl: bool = True
    """Adapt beta towards target_kl (Ziegler et al. 2019); False keeps beta fixed at kl_coef."""
    target_kl: float = 3.0
    """KL (nats per completion) the adaptive controller aims at; Ziegler et al. used 6 to 10."""
    kl_horizon: int = 2000
    """Episodes over which the adaptive controller closes the gap; Ziegler et al. used 10,000."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the score of a completion cut before <eos> (TRL; Huang et al. 2024 set it
    to -1 instead); 0.5 to 3. None turns it off."""
    normalize_reward: bool = True
    """Scale a reward *function* to mean 0, std 1 on the base model's samples (Ziegler et al.
    2019); a RewardModel is normalised already."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards in each batch (TRL's option; no mean shift)."""
    gamma: float = 1.0
    """Discount per token; 1 in RLHF (the episode is short and the score comes at the end)."""
    lam: float = 0.95
    """GAE lambda: 0 = one-step TD (low variance, biased), 1 = Monte Carlo returns. 0.9 to 1."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 in each batch (Huang et al. 2024)."""
    clip_range: float | None = 0.2
    """epsilon of the clipped policy loss; 0.1 to 0.3. None = unclipped (plain ratio objective)."""
    clip_range_value: float | None = 0.2
    """How far a value estimate may move from V_old per iteration; 0.1 to 0.3. None = unclipped."""
    value_coef: float = 0.1
    """Weight of the value loss in the total loss; 0.1 (TRL) to 1."""
    value_init: str = "reward_model"
    """Value model initialised from the "reward_model" (InstructGPT) or the "policy" with a fresh
    head (also the fallback when the reward is a plain function)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; 0.5 to 1. None = no clipping."""
    logprobs_at_sampling_temperature: bool = True
    """Score log-probs with logits / temperature, as sampled (Huang et al. 2024); False uses 1."""
    disable_dropout: bool = True
    """Train in eval mode so dropout cannot make logp_old and logp disagree (Huang et al. 2024)."""
    length_chunks: int = 4
    """Speed only: each forward and backward pass runs on this many groups of episodes of
    similar length, each without its padding columns (``by_length``), and sums their gradients
    weighted by tokens: the same numbers as one pass over the batch, less padding computed.
    1 = one pass. 2 to 4 on a CPU; 1 on a GPU, where one big matrix is cheaper."""
    log_samples: int = 3
    """Sample texts kept in each iteration's log."""
    seed: int = 0
    """Seeds prompt order, sampling and minibatch order."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens",
                     "length_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"PPOConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(
                f"PPOConfig.kl_estimator must be 'k1', 'k2' or 'k3', got {self.kl_estimator!r}")
        if self.kl_in not in ("reward", "loss"):
            raise ValueError(f"PPOConfig.kl_in must be 'reward' or 'loss', got {self.kl_in!r}")
        if (self.kl_in == "reward") != (self.kl_estimator == "k1"):
            raise ValueError(
                f"PPOConfig: kl_estimator={self.kl_estimator!r} with kl_in={self.kl_in!r} does "
                "not pull the policy towards the reference: use k1 in the reward, or k3 (or k2) "
                "in the loss (see ppo.kl_loss for why)")
        if self.value_init not in ("reward_model", "policy"):
            raise ValueError(f"PPOConfig.value_init must be 'reward_model' or 'policy', "
                             f"got {self.value_init!r}")


# ---------------------------------------------------------------------------------------------
# The pieces, each a small function with its equation
# ---------------------------------------------------------------------------------------------

def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t m_t x_t / sum_t m_t: the mean over the real tokens."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def batch_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``masked_mean`` over the real tokens of the whole batch: of every process's share in a
    data-parallel run (``parallel.total``; no gradient flows through it), of this one alone
    otherwise. For statistics of the batch: whitening, explained variance, the logged entropy."""
    return parallel.total((x * mask).sum()) / parallel.total(mask.sum()).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the real tokens (of every process, ``batch_mean``); with
    shift_mean False the mean is added back."""
    mean = batch_mean(x, mask)
    var = batch_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled token, (B, C).

    With log r = logp_ref - logp (y_t sampled from pi), Schulman 2020:
      k1 = -log r = logp - logp_ref      unbiased, can be negative per token (Ziegler; TRL default)
      k2 = (log r)^2 / 2                 biased, low variance, >= 0
      k3 = (r - 1) - log r               unbiased and >= 0
    All are zero when pi = pi_ref. "Unbiased" is about the estimate's *value*; which one also
    has the right *gradient* depends on whether it acts as a reward or a loss (``kl_loss``).
    """
    log_r = logp_ref - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    return torch.expm1(log_r) - log_r


def kl_loss(logp, logp_ref, mask, estimator: str = "k3", aggregate=masked_mean) -> torch.Tensor:
    """The KL penalty as a loss term (GRPO; Shao et al. 2024): mean_t k(logp_t, logp_ref_t),
    with the gradient flowing through logp_t (the tokens stay the sampled ones). ``aggregate``
    turns per-token terms into one number, as for ``policy_loss`` (default: the token mean).

    Which estimator carries the right gradient depends on where it acts. As a *loss*, with
    y_t ~ pi fixed: grad k1 = grad log pi, whose mean under pi is 0 (no pull at all);
    grad k2 = (log pi - log pi_ref) grad log pi, whose mean is grad KL(pi || pi_ref); grad k3 =
    (1 - pi_ref / pi) grad log pi, whose mean is grad KL(pi_ref || pi). So k2 or k3 here.
    As a *reward* (detached, ``per_token_rewards``) it is the other way round: the policy
    gradient of a reward -k1 is exactly -grad KL(pi || pi_ref), while k2 and k3 as rewards
    pull only to second order near pi_ref (k3 = (log r)^2 / 2 + O(log r^3)): that is why
    ``PPOConfig`` pairs k1 with the reward and k2/k3 with the loss.
    """
    return aggregate(kl_penalty(logp, logp_ref, estimator), mask)


def per_token_rewards(scores, kl, mask, kl_coef: float) -> torch.Tensor:
    """r_t = -beta * kl_t, plus the sequence score on the last real token (Ziegler et al. 2019)."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016), vectorised over the batch:

        delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token = 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                            (the value model's target)

    Returns (advantages, returns), both (B, C) and 0 on padding.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):   # the one loop over tokens: the recursion
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(logp, logp_old, advantages, mask, clip_range: float | None = 0.2,
                aggregate=masked_mean):
    """The clipped surrogate objective of PPO (Schulman et al. 2017), as a loss to minimise:

        rho_t = exp(logp_t - logp_old_t)
        L     = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)

    ``aggregate(x, mask)`` is the mean_t: over every real token of the batch by default
    (``critic_free.aggregate`` has GRPO's per-completion mean and Dr. GRPO's constant).
    Returns (loss, clip fraction, approx-KL(pi_old || pi)); the last two are diagnostics.
    """
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    if clip_range is None:
        loss, clipfrac = aggregate(unclipped, mask), torch.zeros(())
    else:
        clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        loss = aggregate(torch.max(unclipped, clipped), mask)
        clipfrac = masked_mean(((ratio - 1).abs() > clip_range).float(), mask)
    # k3 (Schulman 2020), as CleanRL
    approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(values, values_old, returns, mask, clip_range_value: float | None = 0.2):
    """Clipped value loss (Huang et al. 2024, as in OpenAI's baselines):

        V_clip = V_old + clip(V - V_old, -eps_v, eps_v)
        L_V    = 1/2 mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)
    """
    loss = (values - returns) ** 2
    if clip_range_value is not None:
        clipped = values_old + torch.clamp(values - values_old, -clip_range_value, clip_range_value)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def explained_variance(values, returns, mask) -> float:
    """1 - Var(R - V) / Var(R): 1 = perfect value model, 0 = no better than a constant."""
    var_returns = batch_mean((returns - batch_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = batch_mean((residual - batch_mean(residual, mask)) ** 2, mask)
    return float(1 - var_residual / var_returns.clamp(min=1e-8))


class FixedKLController:
    """beta stays at its initial value."""
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, kl: float, n_episodes: int) -> None:
        pass


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: nudge beta so that the KL tracks a target.

        e       = clip(KL / KL_target - 1, -0.2, 0.2)
        beta   <- beta * (1 + e * n_episodes / horizon)
    """
    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, kl: float, n_episodes: int) -> None:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon


# ---------------------------------------------------------------------------------------------
# Before PPO: the simplest policy gradient (lesson 3 has the learner write it)
# ---------------------------------------------------------------------------------------------

def reinforce_step(policy, optimizer, tokenizer, prompts, reward, max_new_tokens: int = 24,
                   seed: int | None = None) -> torch.Tensor:
    """One step of REINFORCE with a baseline (Williams 1992), the policy gradient PPO refines:

        grad J = E[(R - b) grad log pi(y | x)],   log pi(y | x) = sum_t log pi(y_t | s_t)
        L      = -1/B sum_i (R_i - b) log pi(y_i | x_i),        b = 1/B sum_i R_i

    Sample one completion a prompt (``generate`` at temperature 1, seeded with ``seed``), score
    it with ``reward(prompts, completions) -> floats`` (a RewardModel or any function), take one
    ``optimizer`` step on L. The baseline b (the batch's mean reward) leaves the gradient's
    expectation unchanged and cuts its variance. No critic, no KL penalty, no clipping, and each
    batch is used once: PPO adds all four. Returns the rewards R, (B,).
    """
    batch = generate(policy, tokenizer, prompts, max_new_tokens, seed=seed)
    rewards = torch.as_tensor(reward(batch.prompts, batch.texts), dtype=torch.float)
    logp = completion_logprobs(policy, batch).sum(1)             # padding holds 0
    advantages = rewards.to(logp.device) - rewards.mean().to(logp.device)
    loss = -(advantages * logp).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return rewards


# ---------------------------------------------------------------------------------------------
# Value model and rewards
# ---------------------------------------------------------------------------------------------

class ValueModel(nn.Module):
    """V(s_t) for every completion token: a transformer and a scalar head read at each position.

    From a RewardModel (InstructGPT; TRL's last PPO): the reward model read at every prefix,
    V(x, y_<t) = r(x, y_<t), normalised: a copy of its transformer, ``score`` head and token term
    (``log_prob_gate``: the sum of g_i * a_i over the tokens so far), with the normalisation
    folded into the head and the term's scale. From a causal LM: a copy of its transformer and a
    fresh zero head.
    """
    def __init__(self, backbone: nn.Module, head: nn.Linear,
                 log_prob_gate: nn.Module | None = None):
        super().__init__()
        self.backbone, self.head, self.log_prob_gate = backbone, head, log_prob_gate

    @classmethod
    def from_reward_model(cls, reward_model) -> "ValueModel":
        score = reward_model.model.score
        head = nn.Linear(score.in_features, 1).to(score.weight.device)
        # one deepcopy, so an LM head tied to the input embeddings stays tied in the copy
        backbone, log_prob_gate = copy.deepcopy((reward_model.model.base_model,
                                                  reward_model.log_prob_gate))
        with torch.no_grad():
            head.weight.copy_(score.weight / reward_model.std)
            head.bias.fill_(-float(reward_model.mean) / float(reward_model.std))
            if log_prob_gate is not None:
                log_prob_gate.scale = log_prob_gate.scale / float(reward_model.std)
        return cls(backbone, head, log_prob_gate)

    @classmethod
    def from_policy(cls, policy) -> "ValueModel":
        head = nn.Linear(policy.config.hidden_size, 1).to(policy.device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls(copy.deepcopy(policy.base_model), head)

    def forward(self, batch: Completions) -> torch.Tensor:
        ids, mask = batch.input_ids, batch.attention_mask
        hidden = self.backbone(input_ids=ids, attention_mask=mask,
                               position_ids=position_ids(mask)).last_hidden_state
        values = self.head(hidden).squeeze(-1).float()
        if self.log_prob_gate is not None:     # + sum of g_i * a_i over the completion so far
            values = values + self.log_prob_gate(hidden, ids, completion_columns(batch)).cumsum(1)
        return values[:, batch.prompt_ids.shape[1] - 1:-1] * batch.completion_mask  # V(x, y_<t)


def is_reward_model(reward) -> bool:
    return hasattr(reward, "score_completions")


def take(batch: Completions, idx: torch.Tensor, width: int | None = None) -> Completions:
    """The episodes ``idx`` of a batch (a minibatch). With ``width``, only the first ``width``
    completion columns and no prompt column that is padding in every row kept."""
    rows = idx.tolist()
    width = batch.completion_ids.shape[1] if width is None else width
    prompt_mask = batch.prompt_mask[idx]
    first = int(prompt_mask.any(0).long().argmax())           # left padding: drop empty columns
    return Completions([batch.prompts[i] for i in rows], [batch.texts[i] for i in rows],
                       batch.prompt_ids[idx, first:], prompt_mask[:, first:],
                       batch.completion_ids[idx, :width], batch.completion_mask[idx, :width],
                       batch.ended[idx], batch.not_text, batch.top_k,
                       *(None if x is None else x[idx, :width]
                         for x in (batch.logprobs, batch.entropy)))


def length_chunks(batch: Completions, idx: torch.Tensor, n_chunks: int):
    """Split the episodes ``idx`` into ``n_chunks`` groups of similar completion length:
    [(rows, width)], width = the longest completion in the group. A batch's completions run from
    a word to the full max_new_tokens, so most of a (B, C) batch is padding; a group's columns
    stop at its own longest answer."""
    lengths = batch.completion_mask[idx].sum(1)
    idx = idx[lengths.argsort(stable=True)]
    return [(rows, max(1, int(batch.completion_mask[rows].sum(1).max())))
            for rows in idx.tensor_split(min(n_chunks, len(idx))) if len(rows)]


def by_length(fn, batch: Completions, n_chunks: int):
    """``fn(chunk)`` -> (b, width) tensor(s), run on ``length_chunks`` of ``batch`` and put back
    together as (B, C) tensors, 0 on padding: the same values as ``fn(batch)``, faster."""
    B, C = batch.completion_ids.shape
    out = None
    rows_all = torch.arange(B, device=batch.completion_ids.device)
    for rows, width in length_chunks(batch, rows_all, n_chunks):
        result = fn(take(batch, rows, width))
        result = result if isinstance(result, tuple) else (result,)
        out = out or [r.new_zeros(B, C) for r in result]
        for whole, part in zip(out, result):
            whole[rows, :width] = part
    return out[0] if len(out) == 1 else tuple(out)


def token_share(chunk_mask, n) -> torch.Tensor:
    """n_chunk / n: a length chunk's share of the real tokens of its minibatch, the weight of
    the chunk's token mean. n = ``parallel.per_process(minibatch_mask.sum())``, computed once a
    minibatch: in a data-parallel run of W processes it is the real tokens of the whole
    minibatch (every process's share) divided by W, so a process's weighted chunk means add up
    to sum_(its tokens) l_t / (n / W), and DDP's average of their gradients is the gradient of
    the whole minibatch's token mean. With one process n is the minibatch's real tokens."""
    return chunk_mask.sum() / n


@dataclasses.dataclass
class Rollout:
    """One batch of episodes and everything PPO computes from it (shapes: module docstring)."""
    batch: Completions
    logp: torch.Tensor
    logp_ref: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor          # (B,) the reward used, after normalisation and EOS penalty
    raw_scores: torch.Tensor      # (B,) the reward model's (or reward_fn's) own score
    kl: torch.Tensor              # (B, C) per-token KL estimate
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------

class PPOTrainer:
    """PPO fine-tuning of ``policy`` against ``reward``.

    reward: a ``RewardModel`` (has ``score_completions``) or any function
        ``reward_fn(prompts, completions) -> floats``, e.g. ``lambda p, c: world.gold_many(p, c)``.
    gold_fn: optional ``(prompts, completions) -> floats``, logged only, never trained on.
    rewards_fn, advantages_fn: r_t and (A_t, R_t) from the arguments of ``per_token_rewards``
        and ``gae`` (the defaults); policy_loss_fn: the clipped loss alone from the arguments of
        ``policy_loss`` (None: ``policy_loss``; its clip fraction and approx-KL are always logged).

    The trainer trains a copy of ``policy`` (``trainer.policy``); ``trainer.reference`` is a
    frozen copy of the model as given, so the caller's model stays the base model.
    """
    stage = "ppo"   # the name its callbacks and logs get

    name = "PPO"
    config_class = PPOConfig

    def __init__(self, policy, tokenizer, reward, prompts, config: PPOConfig | None = None,
                 gold_fn=None, rewards_fn=per_token_rewards, advantages_fn=gae,
                 policy_loss_fn=None):
        self.config = config = config or self.config_class()
        # the pieces a learner can swap for their own, checked by rlhf_lite.exercises.use
        self.rewards_fn, self.advantages_fn = rewards_fn, advantages_fn
        self.policy_loss_fn = policy_loss_fn
        if not prompts:
            raise ValueError("PPOTrainer needs a non-empty list of training prompts")
        if not (is_reward_model(reward) or callable(reward)):
            raise TypeError("reward must be a RewardModel or a function "
                            "(prompts, completions) -> floats")
        self.tokenizer, self.reward, self.gold_fn = tokenizer, reward, gold_fn
        self.prompts = list(prompts)
        self.device = next(policy.parameters()).device
        # data-parallel: each process takes an equal share of every batch and minibatch, and the
        # completions of one prompt (RLOO's and GRPO's group, samples_per_prompt) stay together
        processes, group = parallel.processes(), getattr(config, "samples_per_prompt", 1)
        if config.batch_size % (processes * group) or config.minibatch_size % processes:
            raise ValueError(
                f"{type(config).__name__}: batch_size ({config.batch_size}) must be a multiple of "
                f"{processes * group} and minibatch_size ({config.minibatch_size}) of {processes} "
                f"to split evenly over the {processes} processes of this run"
                + (f", {group} completions a prompt in one process" if group > 1 else ""))
        # --- set up: policy, frozen reference, value model (InstructGPT; Huang et al. 2024)
        self.policy = copy.deepcopy(policy)
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.value_model = self.make_value_model(policy, reward)   # None: no critic (critic_free)
        models = [m for m in (self.policy, self.value_model) if m is not None]
        for model in models:
            model.train(not config.disable_dropout)   # eval mode = dropout off (Huang et al. 2024)
        # what the update trains through: DDP wrappers in a data-parallel run (``parallel``)
        self.policy_forward = parallel.data_parallel(self.policy)
        self.value_forward = (parallel.data_parallel(self.value_model)
                              if self.value_model is not None else None)
        # eps 1e-5: CleanRL, Huang et al.
        self.optimizer = torch.optim.Adam([p for m in models for p in m.parameters()],
                                          lr=config.learning_rate, eps=1e-5,
                                          fused=fused(self.device))
        self.kl_controller = (AdaptiveKLController(config.kl_coef, config.target_kl,
                                                   config.kl_horizon)
                              if config.adaptive_kl else FixedKLController(config.kl_coef))
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.iteration, self.history = 0, []
        self.reward_mean, self.reward_std = 0.0, 1.0
        if config.normalize_reward and not is_reward_model(reward):
            self._fit_reward_normalisation()

    def make_value_model(self, policy, reward) -> "ValueModel | None":
        """The critic, from the reward model (InstructGPT) or the policy (``value_init``)."""
        if self.config.value_init == "reward_model" and is_reward_model(reward):
            return ValueModel.from_reward_model(reward).to(self.device)
        return ValueModel.from_policy(policy)

    # --- collect ------------------------------------------------------------------------------

    def episode_prompts(self) -> list[str]:
        """The prompts of one iteration: ``batch_size`` drawn at random."""
        return [self.rng.choice(self.prompts) for _ in range(self.config.batch_size)]

    def sample(self, prompts, seed=None) -> Completions:
        cfg = self.config
        with autocast(self.device):
            return generate(self.policy, self.tokenizer, prompts, cfg.max_new_tokens,
                            cfg.temperature, seed=seed)

    @torch.no_grad()
    def raw_score(self, batch: Completions) -> torch.Tensor:
        """The reward model's (or reward function's) score of each episode, (B,)."""
        if is_reward_model(self.reward):
            with autocast(self.device):
                return self.reward.score_completions(batch).float().to(self.device)
        return torch.as_tensor(list(self.reward(batch.prompts, batch.texts)), dtype=torch.float,
                               device=self.device)

    def _fit_reward_normalisation(self, n: int = 256) -> None:
        """Gain and bias so the reward has mean 0, std 1 on the base model's samples
        (Ziegler et al. 2019)."""
        prompts = [self.rng.choice(self.prompts) for _ in range(n)]
        scores = self.raw_score(generate(self.reference, self.tokenizer, prompts,
                                         self.config.max_new_tokens, self.config.temperature,
                                         seed=self.config.seed + 10_000))
        self.reward_mean = float(scores.mean())
        self.reward_std = float(scores.std().clamp(min=1e-6))

    def logprobs(self, model, batch, return_entropy=False):
        temperature = (self.config.temperature if self.config.logprobs_at_sampling_temperature
                       else 1.0)
        with autocast(self.device):
            return completion_logprobs(model, batch, temperature, return_entropy)

    def sampled_logprobs_exact(self) -> bool:
        """Whether ``generate``'s own log-probs and entropies are logp_old's: the numbers a
        forward pass over the finished batch gives (in fp32 they differ by float rounding,
        about 1e-6: the KV cache adds in another order), so the rollout need not compute them
        again. Not in bf16 (a cached and a full pass differ by ~1e-2, why TRL recomputes), nor
        when log-probs are scored at temperature 1 while sampling at another."""
        cfg = self.config
        return not mixed_precision(self.device) and (cfg.logprobs_at_sampling_temperature
                                                     or cfg.temperature == 1.0)

    def values(self, model, batch):
        """V_t from ``model`` (the value model or its DDP wrapper), in fp32."""
        with autocast(self.device):
            return model(batch)

    @torch.no_grad()
    def rollout(self, prompts, seed=None, timings=None) -> Rollout:
        """Sample completions for ``prompts`` and compute rewards and advantages (no update)."""
        cfg, timings = self.config, timings if timings is not None else {}
        start = time.perf_counter()
        batch = self.sample(prompts, seed)
        timings["generation"] = time.perf_counter() - start
        start = time.perf_counter()
        mask = batch.completion_mask.float()
        raw = self.raw_score(batch)
        scores = (raw - self.reward_mean) / self.reward_std
        if cfg.missing_eos_penalty is not None:  # Huang et al. 2024 ("EOS trick"), TRL
            scores = scores - cfg.missing_eos_penalty * (~batch.ended).float()
        chunks = cfg.length_chunks
        if self.sampled_logprobs_exact():         # logp_old as sampled: no second forward pass
            logp, entropy = batch.logprobs, batch.entropy
        else:
            logp, entropy = by_length(lambda b: self.logprobs(self.policy, b, True), batch,
                                      chunks)
        logp_ref = by_length(lambda b: self.logprobs(self.reference, b), batch, chunks)
        values = (by_length(lambda b: self.values(self.value_model, b), batch, chunks)
                  if self.value_model is not None else None)
        timings["scoring"] = time.perf_counter() - start
        kl = kl_penalty(logp, logp_ref, "k1") * mask            # logged; the reward's penalty
        kl_coef = self.kl_controller.value if cfg.kl_in == "reward" else 0.0
        rewards = self.rewards_fn(scores, kl, mask, kl_coef)
        if cfg.whiten_rewards:                                   # TRL's whiten_rewards
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = self.advantages(rewards, values, mask)
        return Rollout(batch, logp, logp_ref, entropy, values, scores, raw, kl, rewards, advantages,
                       returns)

    def advantages(self, rewards, values, mask):
        """(A_t, R_t): GAE and the value targets; A_t whitened in the batch (Huang et al. 2024)."""
        advantages, returns = self.advantages_fn(rewards, values, mask, self.config.gamma,
                                                 self.config.lam)
        if self.config.whiten_advantages:
            advantages = whiten(advantages, mask)
        return advantages, returns

    # --- update -------------------------------------------------------------------------------

    def aggregate(self, x, mask) -> torch.Tensor:
        """Per-token loss terms to one number: the mean over every real token of the minibatch."""
        return masked_mean(x, mask)

    def chunk_weight(self, tokens, chunk_mask, minibatch_mask) -> torch.Tensor:
        """A length chunk's share of the minibatch under ``aggregate``: ``tokens``, its share of
        the real tokens (``token_share``), for the token mean. Chunk losses times their weights
        add up to the minibatch's."""
        return tokens

    def update(self, ro: Rollout) -> dict:
        """``ppo_epochs`` passes of minibatch steps on the clipped policy and value losses."""
        cfg = self.config
        mask = ro.batch.completion_mask.float()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        stats = {}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(ro.batch.texts), generator=self.generator).to(self.device)
            # this process's share of each minibatch (``parallel``): all of it with one process
            for idx in order.split(cfg.minibatch_size // parallel.processes()):
                self.optimizer.zero_grad(set_to_none=True)
                totals = collections.Counter()
                n_tokens = parallel.per_process(mask[idx].sum())    # once a minibatch
                for rows, width in length_chunks(ro.batch, idx, cfg.length_chunks):
                    # each chunk's loss, weighted by its share of the minibatch, adds up to the
                    # minibatch's loss: the gradient is that of one pass (see by_length)
                    minibatch, m = take(ro.batch, rows, width), mask[rows, :width]
                    share = token_share(m, n_tokens)                   # for the token means
                    weight = self.chunk_weight(share, m, mask[idx])
                    tokens = float(share)
                    logp = self.logprobs(self.policy_forward, minibatch)   # one policy forward
                    old_logp, advantages = ro.logp[rows, :width], ro.advantages[rows, :width]
                    pg_loss, clipfrac, approx_kl = policy_loss(logp, old_logp, advantages, m,
                                                               cfg.clip_range, self.aggregate)
                    if self.policy_loss_fn is not None:           # a learner's own loss trains
                        pg_loss = self.policy_loss_fn(logp, old_logp, advantages, m, cfg.clip_range)
                    loss = pg_loss
                    totals["policy_loss"] += float(weight) * pg_loss.item()
                    totals["clipfrac"] += tokens * clipfrac.item()
                    totals["approx_kl"] += tokens * approx_kl.item()
                    if self.value_model is not None:
                        vf_loss = value_loss(self.values(self.value_forward, minibatch),
                                             ro.values[rows, :width], ro.returns[rows, :width], m,
                                             cfg.clip_range_value)
                        loss = loss + cfg.value_coef * vf_loss
                        totals["value_loss"] += tokens * vf_loss.item()
                    if cfg.kl_in == "loss":                          # GRPO's KL term, see kl_loss
                        loss = loss + self.kl_controller.value * kl_loss(
                            logp, ro.logp_ref[rows, :width], m, cfg.kl_estimator, self.aggregate)
                    (weight * loss).backward()
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                for key, value in totals.items():
                    stats.setdefault(key, []).append(value)
        return {key: sum(v) / len(v) for key, v in stats.items()}

    # --- log ----------------------------------------------------------------------------------

    def step(self) -> dict:
        """One PPO iteration: collect a batch, update, and return its log entry."""
        cfg = self.config
        prompts = parallel.share(self.episode_prompts())   # data-parallel: each samples its share
        timings = {}
        seed = cfg.seed * 100_003 + self.iteration + 7_919 * parallel.rank()
        ro = self.rollout(prompts, seed=seed, timings=timings)
        start = time.perf_counter()
        update_stats = self.update(ro)
        timings["update"] = time.perf_counter() - start
        mask = ro.batch.completion_mask.float()
        kl = ro.kl.sum(1).mean().item()
        entry = {
            "iteration": self.iteration,
            "episodes": (self.iteration + 1) * cfg.batch_size,
            "reward": ro.raw_scores.mean().item(),
            "gold": _mean(self.gold_fn(ro.batch.prompts, ro.batch.texts)) if self.gold_fn else None,
            "kl": kl,
            "kl_coef": self.kl_controller.value,
            "entropy": batch_mean(ro.entropy, mask).item(),
            **self.diagnostics(ro),
            "length": ro.batch.lengths.float().mean().item(),
            "eos_fraction": ro.batch.ended.float().mean().item(),
            **update_stats,
            "seconds": dict(timings),
            "samples": [(p, t, s) for p, t, s in zip(ro.batch.prompts, ro.batch.texts,
                                                     ro.raw_scores.tolist())][:cfg.log_samples],
        }
        entry = parallel.average_numbers(entry, self.device)    # over every process's share
        self.kl_controller.update(entry["kl"], cfg.batch_size)
        self.iteration += 1
        self.history.append(entry)
        return entry

    def diagnostics(self, ro: Rollout) -> dict:
        """What tells a healthy run from a sick one, beyond the shared log: the critic's fit."""
        mask = ro.batch.completion_mask.float()
        return {"explained_variance": explained_variance(ro.values, ro.returns, mask)}

    def train(self, steps: int | None = None, plot=None, progress: bool = True,
              callbacks=(), checkpoint_dir=None, checkpoint_every: int = 10,
              resume: bool = False) -> list[dict]:
        """Run ``steps`` iterations (default ``config.steps``); ``plot``: a ``LivePlot`` to update;
        ``callbacks``: functions (stage, step, metrics) called after each iteration
        (``callbacks.py``). checkpoint_dir: save ``ppo_checkpoint.pt`` there every
        ``checkpoint_every`` iterations and after the last (``save_checkpoint``). resume: first go
        on from that checkpoint if there is one; ``steps`` then counts the iterations before the
        stop too, so the run ends where an uninterrupted one would."""
        checkpoint = checkpoint_dir and os.path.join(checkpoint_dir, "ppo_checkpoint.pt")
        if resume and not checkpoint:
            raise ValueError("resume=True needs checkpoint_dir, the folder of the checkpoint")
        if resume and os.path.isfile(checkpoint):
            self.load_checkpoint(checkpoint)
            logger.info("resumed from %s after iteration %d", checkpoint, self.iteration)
            for entry in self.history if plot is not None else ():   # the curves so far
                plot.update(entry["episodes"],
                            **{k: v for k, v in entry.items() if isinstance(v, float)})
        todo = (steps or self.config.steps) - (self.iteration if resume else 0)
        quiet = not (progress and parallel.is_main_process())      # only process 0 prints
        for _ in (bar := tqdm(range(todo), desc=self.name, disable=quiet)):
            entry = self.step()
            bar.set_postfix(reward=f"{entry['reward']:.2f}", kl=f"{entry['kl']:.2f}",
                            **({"gold": f"{entry['gold']:.2f}"} if entry["gold"] is not None
                               else {}))
            if plot is not None:
                plot.update(entry["episodes"],
                            **{k: v for k, v in entry.items() if isinstance(v, float)})
            log_step(callbacks, self.stage, self.iteration, entry)
            due = self.iteration % checkpoint_every == 0 or _ == todo - 1
            if checkpoint and due and parallel.is_main_process():    # one writer: process 0
                self.save_checkpoint(checkpoint)
        if plot is not None:
            plot.finish()
        return self.history

    # --- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self, path) -> None:
        """All that a stopped run needs to go on as if it had never stopped: policy, value model,
        optimizer, the KL controller's beta, the reward normalisation, the random states, the
        iteration and the history. One file (``torch.save``), written, then renamed into place."""
        state = dict(config=dataclasses.asdict(self.config), iteration=self.iteration,
                     history=self.history, policy=self.policy.state_dict(),
                     value_model=(None if self.value_model is None
                                  else self.value_model.state_dict()),
                     optimizer=self.optimizer.state_dict(), kl_coef=self.kl_controller.value,
                     reward_mean=self.reward_mean, reward_std=self.reward_std,
                     rng=self.rng.getstate(), generator=self.generator.get_state())
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save(state, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)

    def load_checkpoint(self, path) -> None:
        """Go on from ``save_checkpoint``'s file, saved with the same ``PPOConfig`` (but ``steps``)
        by a trainer built from the same policy, reward and prompts."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        ours = dataclasses.asdict(self.config)
        differ = [f"{k}={v!r}" for k, v in state["config"].items()
                  if k != "steps" and ours.get(k) != v]
        if differ:
            raise ValueError(f"{path} was saved with other PPO settings ({', '.join(differ)}); "
                             "resume with the same PPOConfig, or start afresh in another folder")
        self.policy.load_state_dict(state["policy"])
        if self.value_model is not None:
            self.value_model.load_state_dict(state["value_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_controller.value = state["kl_coef"]
        self.reward_mean, self.reward_std = state["reward_mean"], state["reward_std"]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.generator.set_state(state["generator"])
        self.iteration, self.history = state["iteration"], state["history"]


def episode_steps(rollout: Rollout, i: int, tokenizer) -> list[dict]:
    """Episode ``i`` of a rollout as RL steps: state s_t (the completion so far), action y_t,
    pi(y_t | s_t), pi_ref(y_t | s_t), kl_t, r_t, V_t and A_t. For showing, not for training."""
    n = int(rollout.batch.completion_mask[i].sum())
    actions = tokenizer.convert_ids_to_tokens(rollout.batch.completion_ids[i, :n].tolist())
    column = lambda x: x[i, :n].tolist()  # noqa: E731
    return [dict(t=t, state=" ".join(actions[:t]), action=a, prob=p, prob_ref=q, kl=k, reward=r,
                 value=v, advantage=adv)
            for t, (a, p, q, k, r, v, adv) in enumerate(zip(
                actions, column(rollout.logp.exp()), column(rollout.logp_ref.exp()),
                column(rollout.kl), column(rollout.rewards), column(rollout.values),
                column(rollout.advantages)))]


PLOT_METRICS = ("reward", "gold", "kl", "entropy", "clipfrac", "explained_variance")
"""The panels a live PPO plot shows: ``LivePlot(PLOT_METRICS, xlabel="episodes")``."""


# ---------------------------------------------------------------------------------------------
# Evaluation: the policy against the base model, judged by gold
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def gold_win_rate(policy, base, tokenizer, prompts, gold_fn, samples_per_prompt: int = 4,
                  max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0) -> Estimate:
    """P(gold(policy's sample) > gold(base's sample)) on ``prompts``, head to head, ties 1/2:
    an ``Estimate`` with its 95% interval, bootstrapped over the prompts (``stats.win_rate``)."""
    batch = [p for p in prompts for _ in range(samples_per_prompt)]
    ours = generate(policy, tokenizer, batch, max_new_tokens, temperature, seed=seed).texts
    theirs = generate(base, tokenizer, batch, max_new_tokens, temperature, seed=seed + 1).texts
    return win_rate(gold_fn(batch, ours), gold_fn(batch, theirs), groups=batch, seed=seed)
