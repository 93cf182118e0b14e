"""Stage 2: the reward model, trained on pairs with the Bradley-Terry loss.

A reward model reads a prompt x and a completion y and returns one number r(x, y). It is not
a regression onto target scores (the labelers never gave any): it is trained only on which
of two completions won. Bradley and Terry (1952) model such a choice as

    P(y_w preferred over y_l | x) = sigmoid(r(x, y_w) - r(x, y_l))

and training maximises the likelihood of the labels, i.e. minimises

    L = -log sigmoid(r(x, y_w) - r(x, y_l))

which pushes r(chosen) up and r(rejected) down until the gap matches how reliably the
labelers prefer one over the other. Only differences are learned, so r is defined up to a
constant; we normalise it to mean 0, std 1 on the base model's own samples at the end.

The network is the base LM with a new linear head hidden -> 1 (a Hugging Face
``AutoModelForSequenceClassification`` with ``num_labels=1``) read at the last real token of
``prompt completion <eos>``. With ``read_log_probs=True`` (the default; lesson 2 shows both) it
adds a sum over the completion's tokens that reads the LM's own next-token log-probabilities
through a learned gate:

    r(x, y) = w . h_T + b  +  sum_t g_t * a_t
    a_t     = log pi(y_t | x, y_<t) - max_v log pi(v | x, y_<t)     (<= 0; 0: the LM's best guess)
    g_t     = softplus(u . h_t + c)                                 (the gate, >= 0)

h_t is the transformer's last hidden state at token t (it has read y_t), h_T the one at the
last real token (<eos>); t runs over the completion's tokens, <eos> included; pi is the same
transformer with the base model's LM head (tied to the input embeddings, as GPT-2 ties them).
w, b (``model.score``), u, c (``log_prob_gate.gate``) and the transformer train together.

Why the second term. The base model has read every fact on its internet: after "Question: What
is the capital of Egypt? Answer: The capital of Egypt is" its likeliest next word is "Cairo"
(a_t = 0) and "Madrid" lies 2.4 nats below it (a_t = -2.4). A head at the last token alone
learns tone and length from 1,000 pairs but not which facts are right: on facts no training
pair asks it scores 0.71-0.72 against a ceiling of 0.87, as nothing makes it copy that knowledge
into w . h_T. Summing a_t with one weight for all tokens does not work either (0.77): the first word
of "Who can say?" is as surprising (-3.0) as a wrong city, because the LM cannot know which
style an answer will take. So a gate g_t, read off each token's state, learns from the pairs
which tokens' surprise matters (the answer word) and which does not (0.83). The gate is kept
>= 0, so the term is a penalty (<= 0) that no answer can earn by writing more, or stranger,
tokens: with a gate of either sign PPO found such answers (24 words of surprising text; gold
fell from 2.0 to -1.7). u = 0 and c = -3 at the start: g = softplus(-3) = 0.05 on every token,
so training starts from (nearly) the last-token reward model.

    symbol      shape   meaning
    h_t         (B,T,H) the transformer's last hidden states; a_t, g_t are (B, T)
    r_chosen    (B,)    r(x, y_w), the reward of the completion the labeler preferred
    r_rejected  (B,)    r(x, y_l), the reward of the other one
    tie         (B,)    bool, the labeler saw no difference
    both_bad    (B,)    bool, the labeler found neither acceptable
    margin      (B,)/() how much the labeler said y_w is better (0 = just "better")
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from . import parallel, stats
from .callbacks import log_step
from .models import (Completions, autocast, encode_completions, fused, generate, pick_device,
                     position_ids, quiet_transformers, seed_everything)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, tie=None, both_bad=None,
                       margin=0.0) -> torch.Tensor:
    """Mean Bradley-Terry loss over a batch of judged pairs.

    With d = r_chosen - r_rejected and target t = P(chosen preferred) from the label::

        L = -[ t * log sigmoid(d - m) + (1 - t) * log sigmoid(-d) ]

    - a preference: t = 1, so L = -log sigmoid(r_chosen - r_rejected - m);
    - a tie (``tie`` True): t = 1/2 and m = 0. The loss is smallest at d = 0, so a tie pulls the
      two rewards together instead of apart;
    - both bad (``both_bad`` True): the pair is left out of the mean. "Neither is acceptable"
      says nothing about which of the two is better, and a pairwise loss has no absolute level
      it could push both down to (r is only defined up to a constant);
    - margin m >= 0 (Llama 2's margin): the chosen must beat the rejected by at least about m
      before the loss stops pulling; a float for all pairs or one value a pair.

    Returns 0 (still differentiable) if every pair is both-bad. In a data-parallel run the
    mean is over the pairs of every process (``parallel.per_process``).
    """
    d = r_chosen - r_rejected
    tie = (torch.zeros_like(d, dtype=torch.bool) if tie is None
           else torch.as_tensor(tie, device=d.device).bool())
    both_bad = (torch.zeros_like(d, dtype=torch.bool) if both_bad is None
                else torch.as_tensor(both_bad, device=d.device).bool())
    m = torch.as_tensor(margin, dtype=d.dtype, device=d.device).expand_as(d)
    preference = -F.logsigmoid(d - m)
    tied = -0.5 * (F.logsigmoid(d) + F.logsigmoid(-d))
    loss = torch.where(tie, tied, preference)
    keep = (~both_bad).to(d.dtype)
    return (loss * keep).sum() / parallel.per_process(keep.sum())


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def completion_columns(batch: Completions) -> torch.Tensor:
    """(B, P + C): 1 on the completion's tokens of ``[prompt | completion]`` rows, 0 elsewhere."""
    return torch.cat([torch.zeros_like(batch.prompt_mask), batch.completion_mask], 1)


class LogProbGate(torch.nn.Module):
    """The reward's token term g_t * a_t (module docstring): the LM head that gives a_t and the
    gate g_t = softplus(u . h_t + c), u = 0 and c = ``gate_start`` to start. ``scale`` multiplies
    the term (1; PPO's value model folds the reward's normalisation into it)."""

    def __init__(self, lm_head: torch.nn.Module, hidden_size: int, gate_start: float = -3.0):
        super().__init__()
        self.lm_head = lm_head
        self.gate = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.gate.weight)
        torch.nn.init.constant_(self.gate.bias, gate_start)
        self.scale = 1.0

    def forward(self, hidden, input_ids, completion_mask) -> torch.Tensor:
        """g_t * a_t at every column that ``completion_mask`` marks, 0 elsewhere: (B, T)."""
        answer = completion_mask[:, 1:].bool()       # a_t needs the state before y_t: column >= 1
        logp = F.log_softmax(self.lm_head(hidden[:, :-1][answer]).float(), -1)   # (N, V)
        a = logp.gather(1, input_ids[:, 1:][answer][:, None]).squeeze(1) - logp.max(1).values
        g = F.softplus(self.gate(hidden[:, 1:][answer]).squeeze(-1).float())
        terms = torch.zeros(answer.shape, device=hidden.device).masked_scatter(answer, g * a)
        return F.pad(terms * self.scale, (1, 0))


class RewardModel(torch.nn.Module):
    """r(x, y): a sequence classifier with one output read at the last real token, plus the LM's
    own log-probabilities of the completion through a learned gate (module docstring).

    ``model``: a Hugging Face ``...ForSequenceClassification`` with ``num_labels=1`` whose head
    is called ``score`` (GPT-2, Llama, Qwen, Mistral, GPT-NeoX all are); ``tokenizer``: the base
    model's. ``mean``/``std``: the normalisation, r_normalised = (r_raw - mean) / std.
    ``log_prob_gate``: the token term; None gives the plain last-token reward model (what a
    folder without ``log_prob_gate.safetensors``, e.g. a reward model trained by TRL, loads as).

    We find the last real token from the attention mask ourselves rather than let the HF model
    look for the rightmost token that is not ``pad_token_id``: with a tokenizer whose pad is
    also its <eos> that would skip the <eos> we want to read at.
    """

    def __init__(self, model, tokenizer, mean: float = 0.0, std: float = 1.0,
                 log_prob_gate: LogProbGate | None = None):
        super().__init__()
        if not hasattr(model, "score") or model.config.num_labels != 1:
            raise ValueError("RewardModel needs a ...ForSequenceClassification with num_labels=1 "
                             "and a 'score' head; build one with "
                             "RewardModel.from_base(base_model, tokenizer)")
        self.model, self.tokenizer = model, tokenizer
        self.mean, self.std = float(mean), float(std)
        self.log_prob_gate = log_prob_gate

    @classmethod
    def from_base(cls, base_model, tokenizer, seed: int = 0,
                  read_log_probs: bool = True) -> "RewardModel":
        """A reward model initialised from a causal LM: same transformer, new head hidden -> 1
        (drawn with ``seed``), the base model's LM head (tied to the input embeddings if the base
        model ties them) and a gate near 0; the rest is a copy of the base model's weights.
        ``read_log_probs=False``: no token term, the plain last-token reward model."""
        config = copy.deepcopy(base_model.config)
        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_token_id
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
        model.base_model.load_state_dict(base_model.base_model.state_dict())
        device = next(base_model.parameters()).device
        if not read_log_probs:
            return cls(model.to(device), tokenizer)
        lm_head = copy.deepcopy(base_model.get_output_embeddings())
        if base_model.get_output_embeddings().weight is base_model.get_input_embeddings().weight:
            lm_head.weight = model.get_input_embeddings().weight
        gate = LogProbGate(lm_head, config.hidden_size)
        return cls(model.to(device), tokenizer, log_prob_gate=gate.to(device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                completion_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw rewards (B,) for ``[left-padded prompt | completion <eos> right-padded]`` rows.

        ``completion_mask`` (B, T): 1 on the completion's tokens, the columns the token term
        sums over (``score_completions`` gives it). Without it every real token but the first
        counts: the prompt's terms then add the same to every answer to that prompt, so pairs
        are still ordered right, but rewards across prompts shift.
        """
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids(attention_mask)).last_hidden_state
        columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * columns).argmax(1)
        rows = torch.arange(len(last), device=last.device)
        r = self.model.score(hidden[rows, last]).squeeze(-1).float()        # w . h_T + b
        if self.log_prob_gate is None:
            return r
        if completion_mask is None:
            completion_mask = attention_mask * (position_ids(attention_mask) > 0)
        return r + self.log_prob_gate(hidden, input_ids, completion_mask).sum(1)   # + sum g_t a_t

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std

    @torch.no_grad()
    def score_completions(self, batch: Completions, normalize: bool = True,
                          batch_size: int = 64) -> torch.Tensor:
        """Rewards (B,) for a ``Completions`` batch (from ``generate`` or ``encode_completions``),
        without re-tokenising. Normalised unless ``normalize=False``. On the batch's device.
        A completion cut off before <eos> (``ended`` False) is read at its last token."""
        was_training = self.model.training
        self.model.eval()
        ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        answer = completion_columns(batch).to(self.device)
        raw = torch.cat([self(ids[i:i + batch_size], mask[i:i + batch_size],
                              answer[i:i + batch_size]) for i in range(0, len(ids), batch_size)])
        self.model.train(was_training)
        return (self.normalise(raw) if normalize else raw).to(batch.prompt_ids.device)

    @torch.no_grad()
    def score(self, prompts, completions, normalize: bool = True,
              batch_size: int = 64) -> torch.Tensor:
        """Rewards (B,) of ``completions`` (texts) answering ``prompts``, each closed with <eos>."""
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"score got {len(prompts)} prompts but {len(completions)} "
                             "completions; give one prompt per completion")
        if not prompts:
            return torch.zeros(0)
        return torch.cat([self.score_completions(encode_completions(
            self.tokenizer, prompts[i:i + batch_size], completions[i:i + batch_size],
            self.device), normalize)
            for i in range(0, len(prompts), batch_size)]).cpu()

    def __call__(self, *args, **kwargs):
        """``reward_model(prompts, completions)`` = ``score``; tensors go to ``forward`` (raw)."""
        if args and isinstance(args[0], torch.Tensor):
            return super().__call__(*args, **kwargs)
        return self.score(*args, **kwargs)

    def save(self, path) -> None:
        """``save_pretrained`` of model and tokenizer, ``normalization.json`` (mean, std) and
        ``log_prob_gate.safetensors`` (the gate, and the LM head unless it is the embeddings)."""
        os.makedirs(path, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        with open(os.path.join(path, "normalization.json"), "w") as f:
            json.dump({"mean": self.mean, "std": self.std}, f)
        if self.log_prob_gate is not None:
            state = self.log_prob_gate.state_dict()
            if self.log_prob_gate.lm_head.weight is self.model.get_input_embeddings().weight:
                del state["lm_head.weight"]             # tied: load takes the embeddings again
            save_file({k: v.contiguous() for k, v in state.items()},
                      os.path.join(path, "log_prob_gate.safetensors"))

    @classmethod
    def load(cls, path, device: str | None = None, base_model=None, prompts=None,
             n_samples: int = 512, max_new_tokens: int = 24, seed: int = 0) -> "RewardModel":
        """A reward model from a folder: one ``save`` wrote, or any sequence classifier with one
        output and a ``score`` head, e.g. one TRL's RewardTrainer saved. Without
        ``normalization.json`` its raw rewards have no known scale: they are then normalised on
        ``n_samples`` samples of ``base_model`` (which shares the folder's tokenizer) on
        ``prompts``, as ``train_reward_model`` does (``normalize_rewards``), with a message."""
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path!r} holds no saved reward model (no config.json); give "
                                    "the folder RewardModel.save (lesson 2: "
                                    "runs/lesson2/reward_model) or a trainer's save_model wrote")
        normalization = os.path.join(path, "normalization.json")
        if not os.path.isfile(normalization) and (base_model is None or not prompts):
            raise FileNotFoundError(
                f"{path!r} has no normalization.json (a reward model trained elsewhere, e.g. by "
                "TRL), so its rewards have no known scale. Pass base_model= (the causal LM it "
                "started from, with the same tokenizer) and prompts= (e.g. "
                "world.split_prompts()[0]) to normalise them on base-model samples")
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        gate = None
        if os.path.isfile(os.path.join(path, "log_prob_gate.safetensors")):
            state = load_file(os.path.join(path, "log_prob_gate.safetensors"))
            embeddings = model.get_input_embeddings().weight
            tied = "lm_head.weight" not in state                # save leaves a tied LM head out
            weight = embeddings if tied else state["lm_head.weight"]
            lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0],
                                      bias="lm_head.bias" in state)
            if tied:
                lm_head.weight = embeddings
            gate = LogProbGate(lm_head, model.config.hidden_size)
            gate.load_state_dict({"lm_head.weight": weight.detach(), **state})
        reward_model = cls(model, tokenizer, log_prob_gate=gate).to(pick_device(device)).eval()
        if os.path.isfile(normalization):
            with open(normalization) as f:
                norm = json.load(f)
            reward_model.mean, reward_model.std = float(norm["mean"]), float(norm["std"])
            return reward_model
        logger.warning("%s has no normalization.json: normalising its rewards on %d samples of "
                       "the base model (mean 0, std 1), as train_reward_model does; save() "
                       "keeps them", path, n_samples)
        normalize_rewards(reward_model, base_model, tokenizer, prompts, n_samples, max_new_tokens,
                          seed=seed)
        return reward_model


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def split_comparisons(comparisons, heldout: float = 0.1, seed: int = 0):
    """(train, held-out) comparisons: a seeded random split, the one ``train_reward_model`` uses."""
    if not 0.0 <= heldout < 1.0:
        raise ValueError(
            f"heldout is the fraction of pairs kept for evaluation, in [0, 1); got {heldout}")
    comparisons = list(comparisons)
    order = list(range(len(comparisons)))
    random.Random(seed).shuffle(order)
    n_heldout = int(round(len(comparisons) * heldout))
    return [comparisons[i] for i in order[n_heldout:]], [comparisons[i] for i in order[:n_heldout]]


def encode_pairs(tokenizer, comparisons, device):
    """Every pair as 2 rows: (input_ids, attention_mask, completion_mask) of shape (2N, T) (the
    last 1 on the completion's tokens), chosen rows 0..N-1 and rejected rows N..2N-1, plus the
    tie and both_bad flags (N,)."""
    prompts = [c.prompt for c in comparisons]
    texts = [c.chosen for c in comparisons] + [c.rejected for c in comparisons]
    batch = encode_completions(tokenizer, prompts + prompts, texts, device)
    flags = torch.tensor([[c.tie, c.both_bad] for c in comparisons], dtype=torch.bool,
                         device=device)
    return (batch.input_ids, batch.attention_mask, completion_columns(batch),
            flags[:, 0], flags[:, 1])


def _pair_forward(reward_model, rows_of_pairs, rows):
    """Raw (r_chosen, r_rejected) for the pairs ``rows``, in one forward pass, all-pad columns cut.
    ``rows_of_pairs``: (input_ids, attention_mask, completion_mask) from ``encode_pairs``."""
    n = len(rows_of_pairs[0]) // 2
    ids, mask, answer = (x[torch.cat([rows, rows + n])] for x in rows_of_pairs)
    used = mask.any(0).nonzero().squeeze(1)
    cut = slice(used.min(), used.max() + 1)
    r = reward_model(ids[:, cut], mask[:, cut], answer[:, cut])
    return r[:len(rows)], r[len(rows):]


@torch.no_grad()
def pair_rewards(reward_model, comparisons, batch_size: int = 64):
    """Raw rewards (r_chosen, r_rejected), each (N,), of judged pairs. Raw, not normalised:
    sigmoid(r_chosen - r_rejected) is the model's P(chosen preferred) only in the units it was
    trained in."""
    was_training = reward_model.training
    reward_model.eval()
    ids, mask, answer, _, _ = encode_pairs(reward_model.tokenizer, comparisons, reward_model.device)
    n = len(comparisons)
    order = (mask[:n].sum(1) + mask[n:].sum(1)).argsort()  # similar lengths together: less padding
    r_chosen, r_rejected = torch.zeros(n, device=ids.device), torch.zeros(n, device=ids.device)
    for rows in order.split(batch_size):
        r_chosen[rows], r_rejected[rows] = _pair_forward(reward_model, (ids, mask, answer), rows)
    reward_model.train(was_training)
    return r_chosen.cpu(), r_rejected.cpu()


def preference_accuracy(r_chosen, r_rejected, tie=None, both_bad=None) -> float:
    """Share of pairs with a preference (no tie, not both bad) where r_chosen > r_rejected."""
    counted = torch.ones_like(r_chosen, dtype=torch.bool)
    for flags in (tie, both_bad):
        if flags is not None:
            counted &= ~torch.as_tensor(flags, device=r_chosen.device).bool()
    return (r_chosen > r_rejected)[counted].float().mean().item() if counted.any() else float("nan")


@torch.no_grad()
def normalize_rewards(reward_model, base_model, tokenizer, prompts, n_samples: int = 512,
                      max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0):
    """Set ``reward_model.mean``/``.std`` so that rewards of the base model's own samples on
    ``prompts`` have mean 0 and std 1; returns (mean, std). ``train_reward_model`` calls it at
    the end of training; call it yourself after changing the model.

    r_normalised = (r - mean) / std is the same ranking on a scale PPO can rely on: 0 is "as
    good as a typical base-model answer", +1 is one standard deviation better.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("normalize_rewards needs prompts to sample the base model on")
    batch_prompts = [prompts[i % len(prompts)] for i in range(n_samples)]
    raw = torch.cat([reward_model.score_completions(
        generate(base_model, tokenizer, batch_prompts[i:i + 256], max_new_tokens, temperature,
                 seed=seed + i), normalize=False).cpu() for i in range(0, n_samples, 256)])
    reward_model.mean, reward_model.std = raw.mean().item(), max(raw.std().item(), 1e-6)
    return reward_model.mean, reward_model.std


def train_reward_model(base_model, tokenizer, comparisons, heldout: float = 0.1, epochs: int = 3,
                       lr: float | None = None, gate_lr: float = 5e-3, batch_size: int = 32,
                       weight_decay: float = 0.0, margin: float = 0.0, max_new_tokens: int = 24,
                       read_log_probs: bool = True, seed: int = 0, device: str | None = None,
                       loss_fn=bradley_terry_loss, callbacks=(), progress: bool = True):
    """Train r(x, y) on judged pairs by minimising the Bradley-Terry loss; returns
    (reward_model, history).

    base_model, tokenizer: the causal LM the reward model starts from (its weights are copied).
    comparisons: ``Comparison``s (lesson 1's labels, or ``make_preference_dataset``).
    heldout: fraction of pairs kept out of training and evaluated after every epoch
        (``split_comparisons(comparisons, heldout, seed)`` gives the same split).
    epochs, lr, gate_lr, batch_size: AdamW with a short warm-up and a cosine decay. ``gate_lr``
        for the gate (u, c), ``lr`` for everything else (transformer, LM head, head w, b). A small
        ``lr`` keeps the knowledge that a_t reads: on held-out facts 2e-3 does worse than 5e-4.
        The defaults (3 epochs, 32 pairs; ``lr`` 5e-4 with the token term and 5e-3 for the gate,
        2e-3 without it) fit the tiny base model; a bigger model wants ~1e-5 to 1e-4 for ``lr``.
    margin: see ``bradley_terry_loss``.
    loss_fn: the training loss, called as ``bradley_terry_loss`` is (a learner's own, checked by
        ``rlhf_lite.exercises.use``); the held-out loss stays ``bradley_terry_loss``.
    max_new_tokens: length of the base-model samples used for the normalisation
        (``world.max_new_tokens``); the prompts are those of the training pairs.
    read_log_probs: add the token term sum_t g_t a_t (module docstring, the default): it judges
        facts the labels never asked about far better than the last-token head alone, and its
        gate is >= 0, so no answer earns reward by writing more or stranger tokens. False gives
        the plain last-token reward model (lesson 2 sets the two side by side).
    callbacks: functions (stage, step, metrics) called after each step and each held-out
        evaluation (``callbacks.py``).

    history: step, train_loss, train_accuracy (every step); epoch, heldout_loss,
    heldout_accuracy (every epoch; empty if heldout is 0); n_train, n_heldout, seconds.
    """
    # --- set up
    start = time.time()
    device = pick_device(device)
    seed_everything(seed)
    train, held = split_comparisons(comparisons, heldout, seed)
    if not train:
        raise ValueError("no pairs to train on: give comparisons "
                         "(e.g. make_preference_dataset(...))")
    lr = lr if lr is not None else (5e-4 if read_log_probs else 2e-3)
    reward_model = RewardModel.from_base(base_model, tokenizer, seed, read_log_probs)
    reward_model = reward_model.to(device).train()
    trained = parallel.data_parallel(reward_model)   # several processes: DDP averages gradients
    ids, mask, answer, tie, both_bad = encode_pairs(tokenizer, train, device)
    steps_per_epoch = len(parallel.minibatches(torch.arange(len(train)), batch_size))
    total = epochs * steps_per_epoch
    gate = list(reward_model.log_prob_gate.gate.parameters()) if read_log_probs else []
    rest = [p for p in reward_model.parameters() if all(p is not q for q in gate)]
    optimizer = torch.optim.AdamW([dict(params=rest, lr=lr), dict(params=gate, lr=gate_lr)],
                                  weight_decay=weight_decay, fused=fused(device))
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * s / total)))
    generator = torch.Generator().manual_seed(seed)
    history = dict(step=[], train_loss=[], train_accuracy=[], epoch=[], heldout_loss=[],
                   heldout_accuracy=[], n_train=len(train), n_heldout=len(held))
    bar = tqdm(total=total, desc="reward model",
               disable=not (progress and parallel.is_main_process()))
    for epoch in range(1, epochs + 1):
        # --- one pass over the training pairs
        order = torch.randperm(len(train), generator=generator).to(device)
        for rows in parallel.minibatches(order, batch_size):    # this process's share of each
            with autocast(device):
                r_chosen, r_rejected = _pair_forward(trained, (ids, mask, answer), rows)
            loss = loss_fn(r_chosen, r_rejected, tie[rows], both_bad[rows], margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reward_model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            history["step"].append(len(history["step"]) + 1)
            history["train_loss"].append(parallel.average(loss.detach()).item())
            history["train_accuracy"].append(preference_accuracy(
                r_chosen.detach(), r_rejected.detach(), tie[rows], both_bad[rows]))
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            log_step(callbacks, "reward_model", history["step"][-1],
                     {"loss": history["train_loss"][-1], "accuracy": history["train_accuracy"][-1]})
        # --- held-out pairs
        if held:
            r_chosen, r_rejected = pair_rewards(reward_model, held)
            flags = torch.tensor([[c.tie, c.both_bad] for c in held], dtype=torch.bool)
            history["epoch"].append(epoch)
            history["heldout_loss"].append(bradley_terry_loss(
                r_chosen, r_rejected, flags[:, 0], flags[:, 1], margin).item())
            history["heldout_accuracy"].append(preference_accuracy(
                r_chosen, r_rejected, flags[:, 0], flags[:, 1]))
            bar.set_postfix(loss=f"{loss.item():.3f}",
                            heldout_acc=f"{history['heldout_accuracy'][-1]:.3f}")
            log_step(callbacks, "reward_model", history["step"][-1],
                     {"heldout_loss": history["heldout_loss"][-1],
                      "heldout_accuracy": history["heldout_accuracy"][-1]})
    bar.close()
    # --- normalise on base-model samples
    reward_model.eval()
    normalize_rewards(reward_model, base_model, tokenizer, sorted({c.prompt for c in train}),
                      max_new_tokens=max_new_tokens, seed=seed)
    history["seconds"] = time.time() - start
    return reward_model, history


# ---------------------------------------------------------------------------------------------
# Evaluation: against the labels, the gold judge, and the best any model could do
# ---------------------------------------------------------------------------------------------

def noise_ceiling(labeler, comparisons) -> float:
    """The best accuracy any reward model can expect against this labeler's labels.

    A reward model reads (x, y) and never sees which answer was shown on the left, so it is
    *side-blind*. The simulated labeler prefers the left answer with probability
    sigmoid(du / T + b) (``labeler.prob_left``), du the utility gap, b its position bias. With
    the sides a coin flip, the answer with the higher utility wins with probability

        p = 1/2 [sigmoid(|du| / T + b) + sigmoid(|du| / T - b)]

    and a model that knows u exactly, predicting that answer, is right with probability p
    (1/2 when du = 0). The ceiling is p averaged over the pairs with a preference. Without a
    position bias it is the plain max(P, 1 - P) of a Bradley-Terry choice.
    """
    ps = []
    for c in comparisons:
        if not (c.tie or c.both_bad):
            chosen_left = labeler.prob_left(c.prompt, c.chosen, c.rejected)       # P(chosen wins)
            chosen_right = 1 - labeler.prob_left(c.prompt, c.rejected, c.chosen)  # when shown right
            p = 0.5 * (chosen_left + chosen_right)
            ps.append(max(p, 1 - p))
    return sum(ps) / len(ps) if ps else float("nan")


def shortfall_by_style(world, labeler, comparisons, r_chosen, r_rejected) -> list[dict]:
    """Where the accuracy falls short of the noise ceiling, by the styles of the two answers.

    One row per pair of styles (``world.style``, in alphabetical order): ``pairs``, the
    ``accuracy`` against the labels (``accuracy_ci95``: its Wilson interval) and the ``ceiling``
    on those pairs, and ``points``: how many
    points of the overall gap (ceiling - accuracy, over all pairs with a preference) they account
    for. The rows' points add up to that gap; the largest first.
    """
    groups = {}
    for i, c in enumerate(comparisons):
        if not (c.tie or c.both_bad):
            styles = tuple(sorted((world.style(c.prompt, c.chosen),
                                   world.style(c.prompt, c.rejected))))
            groups.setdefault(styles, []).append(i)
    total = sum(map(len, groups.values()))
    rows = []
    for styles, idx in groups.items():
        accuracy = preference_accuracy(r_chosen[idx], r_rejected[idx])
        ceiling = noise_ceiling(labeler, [comparisons[i] for i in idx])
        rows.append(dict(styles=styles, pairs=len(idx), accuracy=accuracy, ceiling=ceiling,
                         accuracy_ci95=list(stats.wilson_interval(accuracy * len(idx), len(idx))),
                         points=100 * len(idx) * (ceiling - accuracy) / total))
    return sorted(rows, key=lambda r: -r["points"])


def gold_agreement(world, comparisons, r_chosen, r_rejected, criteria="helpful") -> float:
    """Share of pairs, among those the gold judge does not see as equal, that the reward model
    orders the way gold does: sign(r_chosen - r_rejected) == sign(u_chosen - u_rejected)."""
    prompts = [c.prompt for c in comparisons]
    u_chosen = torch.tensor(world.gold_many(prompts, [c.chosen for c in comparisons], criteria))
    u_rejected = torch.tensor(world.gold_many(prompts, [c.rejected for c in comparisons], criteria))
    differ = (u_chosen - u_rejected).abs() > 1e-9
    agree = torch.sign(r_chosen - r_rejected) == torch.sign(u_chosen - u_rejected)
    return agree[differ].float().mean().item() if differ.any() else float("nan")


def calibration(r_chosen, r_rejected, bins: int = 10) -> dict:
    """Predicted P(preferred) = sigmoid(r_A - r_B) against how often A really was preferred.

    Each pair counts in both orders, (chosen, rejected) -> label 1 and (rejected, chosen) -> 0,
    so the curve is about the model's confidence, not about which side we wrote first. Use raw
    rewards (``pair_rewards``). Returns, for the non-empty bins: predicted (mean predicted
    probability), observed (share preferred), count. Calibrated: observed == predicted.
    """
    p = torch.sigmoid(r_chosen - r_rejected)
    predicted, labels = torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    which = (predicted * bins).long().clamp(max=bins - 1)
    out = dict(predicted=[], observed=[], count=[])
    for b in range(bins):
        sel = which == b
        if sel.any():
            out["predicted"].append(predicted[sel].mean().item())
            out["observed"].append(labels[sel].mean().item())
            out["count"].append(int(sel.sum()))
    return out


def rewards_by_style(reward_model, world, n: int = 2000, prompts=None, seed: int = 1) -> dict:
    """Normalised rewards of internet (corpus) answers, grouped by the style they were written in:
    {style: tensor}. ``prompts``: keep only answers to these (e.g. held-out prompts)."""
    rows = world.corpus(n, seed=seed)
    if prompts is not None:
        keep = set(prompts)
        rows = [row for row in rows if row[0] in keep]
    rewards = reward_model.score([p for p, _, _ in rows], [a for _, a, _ in rows])
    out = {}
    for (_, _, style), r in zip(rows, rewards):
        out.setdefault(style, []).append(r.item())
    return {style: torch.tensor(v) for style, v in out.items()}


def evaluate(reward_model, comparisons, world=None, labeler=None, criteria="helpful") -> dict:
    """The numbers lesson 2 reports on held-out pairs.

    accuracy: an ``Estimate`` (value, Wilson 95% interval, n) against the labels, over the pairs
    with a preference; n_pairs: all pairs given. With ``world``: gold_agreement (the order of
    the gold utility, see ``gold_agreement``) and gold_accuracy, the accuracy of the gold
    utility itself against the same labels: what a perfect reward model scores on *these*
    labels, which the expected ``noise_ceiling_accuracy`` (with the simulated ``labeler``)
    should match within its interval.
    """
    comparisons = list(comparisons)
    r_chosen, r_rejected = pair_rewards(reward_model, comparisons)
    preferred = [i for i, c in enumerate(comparisons) if not (c.tie or c.both_bad)]
    out = dict(n_pairs=len(comparisons),
               accuracy=stats.accuracy((r_chosen[preferred] > r_rejected[preferred]).tolist()))
    crit = labeler.criteria if labeler is not None else criteria
    if world is not None:
        out["gold_agreement"] = gold_agreement(world, comparisons, r_chosen, r_rejected, crit)
        kept = [comparisons[i] for i in preferred]
        u_chosen = world.gold_many([c.prompt for c in kept], [c.chosen for c in kept], crit)
        u_rejected = world.gold_many([c.prompt for c in kept], [c.rejected for c in kept], crit)
        out["gold_accuracy"] = stats.accuracy([(a > b) + 0.5 * (a == b)
                                               for a, b in zip(u_chosen, u_rejected)])
    if labeler is not None:
        out["noise_ceiling_accuracy"] = noise_ceiling(labeler, comparisons)
    return out
