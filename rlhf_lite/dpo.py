"""Beyond PPO, part 1: learning from the preference labels directly (DPO), and the SFT baseline.

RLHF fits a reward model to the labels, then runs PPO against it. Direct Preference
Optimisation (Rafailov et al. 2023, "Your Language Model is Secretly a Reward Model") notices
that the KL-regularised RL objective has a closed-form optimum,

    pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x),

so every policy pi defines the reward it is optimal for, up to a term that depends on x only:

    r(x, y) = beta log pi(y | x) / pi_ref(y | x) + beta log Z(x).        (the implicit reward)

Put that reward into the Bradley-Terry loss of the reward model: Z(x) cancels in the difference,
and the reward model *is* the policy. One supervised loss on the same (x, y_w, y_l) pairs, no
sampling, no critic, no reward model to over-optimise (it can still over-fit the labels).

The SFT baseline is what the seed contrasts RLHF with ("supervised fine tuning: {input_text,
summary}"): fine-tune on the chosen answers alone and ignore what was rejected.

Both trainers use the one log-prob helper (``models.completion_logprobs``) on batches laid out
by ``models.encode_completions``.
"""
from __future__ import annotations

import copy
import dataclasses
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .callbacks import log_step
from .models import (autocast, completion_logprobs, encode_completions, fused, pick_device,
                     seed_everything)


def sequence_logprobs(model, tokenizer, prompts, completions,
                      temperature: float = 1.0) -> torch.Tensor:
    """log pi(y | x) = sum_t log pi(y_t | x, y_<t) per (prompt, completion), with <eos>: (B,)."""
    device = next(model.parameters()).device
    batch = encode_completions(tokenizer, prompts, completions, device)
    return completion_logprobs(model, batch, temperature).sum(1)


def _usable(comparisons) -> list:
    """Comparisons that carry a preference (ties and both-bad judgements carry none)."""
    usable = [c for c in comparisons if not (c.tie or c.both_bad)]
    if not usable:
        raise ValueError("no comparison with a preference in the data (all are ties or "
                         "both-bad); DPO and SFT need chosen/rejected pairs, e.g. from "
                         "make_preference_dataset")
    return usable


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------

def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float = 0.1):
    """The DPO loss (Rafailov et al. 2023, eq. 7), averaged over the batch.

        L_DPO = -E_(x, y_w, y_l) [ log sigmoid( beta log pi(y_w|x)/pi_ref(y_w|x)
                                               - beta log pi(y_l|x)/pi_ref(y_l|x) ) ]

    ==========================  =====  ================================================
    symbol                      shape  meaning
    ==========================  =====  ================================================
    policy_chosen_logps         (B,)   log pi(y_w | x): the policy on the chosen answer
    policy_rejected_logps       (B,)   log pi(y_l | x): the policy on the rejected answer
    reference_chosen_logps      (B,)   log pi_ref(y_w | x): the frozen base model
    reference_rejected_logps    (B,)   log pi_ref(y_l | x)
    beta                        float  how far from pi_ref the policy may move; the KL
                                       coefficient of the RL objective it solves. 0.1 is
                                       usual (0.01 to 0.5): smaller moves further.
    ==========================  =====  ================================================

    Returns (loss, chosen_rewards, rejected_rewards): the rewards are the implicit
    r(x, y) = beta log pi(y|x)/pi_ref(y|x), detached, (B,) each.
    """
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


@torch.no_grad()
def implicit_reward(policy, reference, tokenizer, prompts, completions,
                    beta: float = 0.1) -> torch.Tensor:
    """The reward a DPO policy has learned: r(x, y) = beta log pi(y|x) / pi_ref(y|x), (B,).

    Zero for every answer while policy = reference; it ranks answers like a reward model
    (only differences between answers to the same prompt mean anything: log Z(x) is dropped).
    """
    return beta * (sequence_logprobs(policy, tokenizer, prompts, completions)
                   - sequence_logprobs(reference, tokenizer, prompts, completions))


@dataclasses.dataclass
class DPOConfig:
    beta: float = 0.5
    """KL strength: the beta of the loss; smaller lets the policy move further. The paper used
    0.1 to 0.5 on large models; on the tiny model 0.1 drifts into malformed text, 0.5 does not."""
    epochs: int = 2
    """Passes over the preference pairs."""
    batch_size: int = 32
    """Pairs a step."""
    lr: float = 3e-4
    """AdamW learning rate (small models take more than the 5e-7 used on 7B ones)."""
    seed: int = 0
    device: str | None = None
    """None: CUDA when present, else the CPU."""


def train_dpo(base_model, tokenizer, comparisons, config: DPOConfig | None = None, loss_fn=None,
              callbacks=(),
              **overrides):
    """Fine-tune a copy of ``base_model`` on ``comparisons`` (list of ``Comparison``) with DPO.

    The reference pi_ref is ``base_model`` itself, frozen; its log-probs are computed once.
    Keyword ``overrides`` change fields of ``config`` (e.g. ``beta=0.3``).
    loss_fn: None (``dpo_loss``), or a function of ``dpo_loss``'s arguments that returns the loss
    alone (a learner's own, checked by ``rlhf_lite.exercises.use``); the logged rewards stay ours.
    callbacks: functions (stage, step, metrics) called after each step (``callbacks.py``).
    Returns (policy, history): history has one dict a step with loss, accuracy (share of pairs
    whose implicit reward ranks chosen above rejected), margin, chosen_reward, rejected_reward.
    """
    config = dataclasses.replace(config or DPOConfig(), **overrides)
    # -- set up: policy = trainable copy, reference = the frozen base model --
    device = pick_device(config.device)
    seed_everything(config.seed)
    data = _usable(comparisons)
    here = next(base_model.parameters()).device
    on_device = here.type == device.type and device.index in (None, here.index)
    # a copy when moving, so the caller's model stays put
    reference = (base_model if on_device else copy.deepcopy(base_model).to(device)).eval()
    policy = copy.deepcopy(reference).train()
    prompts = [c.prompt for c in data]
    chosen, rejected = [c.chosen for c in data], [c.rejected for c in data]
    with torch.no_grad(), autocast(device):
        ref_chosen = torch.cat([sequence_logprobs(reference, tokenizer, prompts[i:i + 256],
                                                  chosen[i:i + 256])
                                for i in range(0, len(data), 256)])
        ref_rejected = torch.cat([sequence_logprobs(reference, tokenizer, prompts[i:i + 256],
                                                    rejected[i:i + 256])
                                  for i in range(0, len(data), 256)])
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0,
                                  fused=fused(device))
    rng = random.Random(config.seed)
    steps = config.epochs * -(-len(data) // config.batch_size)
    history = []
    with tqdm(total=steps, desc="DPO") as bar:
        for _ in range(config.epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                idx = order[start:start + config.batch_size]
                # -- the loss on one batch of pairs: chosen and rejected in one forward pass --
                with autocast(device):
                    logps = sequence_logprobs(policy, tokenizer, [prompts[i] for i in idx] * 2,
                                              [chosen[i] for i in idx] + [rejected[i] for i in idx])
                loss, r_chosen, r_rejected = dpo_loss(logps[:len(idx)], logps[len(idx):],
                                                      ref_chosen[idx], ref_rejected[idx],
                                                      config.beta)
                if loss_fn is not None:
                    loss = loss_fn(logps[:len(idx)], logps[len(idx):], ref_chosen[idx],
                                   ref_rejected[idx], config.beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                optimizer.step()
                # -- log --
                history.append(dict(loss=loss.item(),
                                    accuracy=(r_chosen > r_rejected).float().mean().item(),
                                    margin=(r_chosen - r_rejected).mean().item(),
                                    chosen_reward=r_chosen.mean().item(),
                                    rejected_reward=r_rejected.mean().item()))
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}",
                                acc=f"{history[-1]['accuracy']:.2f}")
                log_step(callbacks, "dpo", len(history), history[-1])
    return policy.eval(), history


# ---------------------------------------------------------------------------------------------
# SFT on the chosen answers: the baseline
# ---------------------------------------------------------------------------------------------

def sft_loss(policy_chosen_token_logps: torch.Tensor,
             completion_mask: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: the mean negative log-likelihood of the chosen answers' tokens,

        L_SFT = -(1 / sum |y_w|) sum_(x, y_w) sum_t log pi(y_w,t | x, y_w,<t)

    policy_chosen_token_logps: (B, C) per-token log pi, 0 on padding; completion_mask: (B, C).
    """
    return -policy_chosen_token_logps.sum() / completion_mask.sum()


@dataclasses.dataclass
class SFTConfig:
    epochs: int = 2
    """Passes over the chosen answers."""
    batch_size: int = 32
    lr: float = 3e-4
    """AdamW learning rate."""
    seed: int = 0
    device: str | None = None


def train_sft(base_model, tokenizer, comparisons, config: SFTConfig | None = None, callbacks=(),
              **overrides):
    """Fine-tune a copy of ``base_model`` on the chosen answers of ``comparisons`` alone.

    Returns (policy, history): history has one dict a step with the loss (``sft_loss``).
    callbacks: functions (stage, step, metrics) called after each step (``callbacks.py``).
    """
    config = dataclasses.replace(config or SFTConfig(), **overrides)
    device = pick_device(config.device)
    seed_everything(config.seed)
    data = _usable(comparisons)
    policy = copy.deepcopy(base_model).to(device).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0,
                                  fused=fused(device))
    rng = random.Random(config.seed)
    steps = config.epochs * -(-len(data) // config.batch_size)
    history = []
    with tqdm(total=steps, desc="SFT") as bar:
        for _ in range(config.epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                rows = [data[i] for i in order[start:start + config.batch_size]]
                batch = encode_completions(tokenizer, [c.prompt for c in rows],
                                           [c.chosen for c in rows], device)
                with autocast(device):
                    loss = sft_loss(completion_logprobs(policy, batch), batch.completion_mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                optimizer.step()
                history.append(dict(loss=loss.item()))
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
                log_step(callbacks, "sft", len(history), history[-1])
    return policy.eval(), history
