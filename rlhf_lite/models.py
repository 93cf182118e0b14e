"""The models: a word-level tokenizer, a small GPT-2 pretrained on the world's internet (three
sizes, ``PRESETS``), or a causal LM of your own (``load_model``), and the two helpers every stage
shares: ``generate`` (sample completions) and ``completion_logprobs``. ``autocast``: bf16 on GPUs.

A completion batch is laid out as ``[left-padded prompt | right-padded completion]``::

    prompt_ids      (B, P)  <pad> <pad> Question : What ... Answer :
    completion_ids  (B, C)  Paris . <eos> <pad> <pad>
    completion_mask (B, C)  1     1 1     0     0        (1 = a real token, <eos> included)

Position ids count real tokens only, so left padding changes nothing for the model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from tqdm.auto import tqdm
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel,
                          PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

from . import parallel
from .callbacks import log_step

log = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A size of the base model and the training settings that make it learn: one row of
    ``PRESETS``, the one place they live. Every learning rate falls with the width d = n_embd
    (Adam moves each weight by about lr, and a wider layer sums more of them): pretraining's
    are measured (1e-2 does not train the gpu model at all), about 1e-2 (128 / d)^(5/3);
    the fine-tuning ones (reward model, its gate, RL) are tiny's scaled by 128 / d."""
    n_embd: int
    n_layer: int
    n_head: int
    pretrain_lr: float
    """Peak AdamW learning rate of pretraining (``pretrain``)."""
    pretrain_steps: int
    """Pretraining steps: enough for the loss to reach the corpus's floor (~0.35)."""
    pretrain_batch_size: int = 64
    """Corpus lines a pretraining step."""
    warmup: float = 0.05
    """Share of the pretraining steps that warm the learning rate up (then a cosine decay)."""
    reward_model_lr: float = 5e-4
    """AdamW learning rate of ``train_reward_model`` (its ``lr``: the transformer and heads)."""
    reward_model_gate_lr: float = 5e-3
    """AdamW learning rate of the reward model's log-prob gate (``train_reward_model``'s
    ``gate_lr``)."""
    rl_lr: float = 5e-4
    """Adam learning rate of the RL stage: PPO, RLOO, GRPO (``PPOConfig.learning_rate``)."""

    @property
    def sizes(self) -> dict:
        return dict(n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head)

    @property
    def pretraining(self) -> dict:
        """``pretrain``'s settings for this preset, as its keyword arguments."""
        return dict(steps=self.pretrain_steps, lr=self.pretrain_lr,
                    batch_size=self.pretrain_batch_size, warmup=self.warmup)


PRESETS = {
    # ~0.5M parameters: the CPU default
    "tiny": Preset(128, 2, 4, pretrain_lr=1e-2, pretrain_steps=800),
    # ~3M: a CPU, about a quarter of an hour on one thread (pretraining 2,000 steps: 12 min)
    "small": Preset(256, 4, 4, pretrain_lr=3e-3, pretrain_steps=2000, reward_model_lr=2.5e-4,
                    reward_model_gate_lr=2.5e-3, rl_lr=2.5e-4),
    # ~25M: for a GPU
    "gpu": Preset(512, 8, 8, pretrain_lr=1e-3, pretrain_steps=2000, reward_model_lr=1.25e-4,
                  reward_model_gate_lr=1.25e-3, rl_lr=1.25e-4),
}
"""The base model's presets: GPT-2s with 128 positions, and how to train each (``Preset``).
Pretraining learning rates measured on an H100 (2,000 steps, mean loss of the last 50):
gpu 1e-2 -> 1.05, 3e-3 -> 0.370, 1e-3 -> 0.350; small 3e-3 -> 0.357 (1,500 steps). On a CPU
(benchmarks/bench_presets.py): small 3e-3, 2,000 steps -> 0.352; tiny 1e-2, 800 -> 0.365.
The tiny row's reward-model and RL rates are ``train_reward_model``'s and ``PPOConfig``'s
defaults."""

def preset_for(model) -> str:
    """The name of the preset nearest in width to ``model`` (a causal LM of your own): whose
    training settings to use for it."""
    width = model.config.hidden_size
    return min(PRESETS, key=lambda name: abs(math.log(PRESETS[name].n_embd / width)))


class UnusableModel(ValueError):
    """A model or tokenizer the course cannot run with; the message says why and how to fix it."""


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU. In a data-parallel run
    (``parallel``) "cuda" means this process's own GPU, cuda:LOCAL_RANK."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but this machine has no CUDA GPU; use 'cpu'")
    if device == "cuda" and parallel.processes() > 1:
        device = parallel.local_gpu()
    return torch.device(device)


def fused(device) -> bool:
    """Whether torch's fused Adam/AdamW (one kernel for every tensor, not a loop over them) runs
    on ``device``: the optimizers' ``fused=`` (3% of a PPO step, 2.5% of pretraining on a CPU)."""
    return torch.device(device).type in ("cpu", "cuda")


def autocast(device):
    """Mixed precision where it pays: bf16 autocast on a CUDA GPU that has bf16 (Ampere and
    newer), nothing at all elsewhere (the CPU runs in fp32). Wrap forward passes only: matmuls
    run in bf16 while the weights and the optimiser stay fp32, and log-probs
    (``next_token_logits``), rewards, values, the KL and every loss are cast back to fp32."""
    if mixed_precision(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mixed_precision(device) -> bool:
    """Whether ``autocast`` runs ``device``'s forward passes in bf16: a CUDA GPU with bf16 in
    hardware (Ampere and newer)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int = 1) -> int:
    """The CPU threads torch uses (every lesson calls it first); returns the number set.

    One by default: the course's models are so small that a second thread gains about a third
    on an idle 2-core CPU but loses several times over when anything else runs on it, and with
    one thread every run of a lesson gives the same numbers. GPUs are not affected.
    """
    torch.set_num_threads(n)
    return torch.get_num_threads()


@contextlib.contextmanager
def quiet_transformers():
    """Load and save without transformers' progress bars ("Loading weights", "Writing model
    shards"): they fill notebook outputs with bars for files that take milliseconds."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

def build_tokenizer(world) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's closed vocabulary (one token a word or mark)."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK] + sorted(world.task.vocabulary()))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Words split at spaces, then every punctuation mark its own token: so decoding (which joins
    # "Paris ." into "Paris.") and encoding again gives back the same ids for anything the model
    # writes, ", ," included (a plain Whitespace pre-tokenizer would read ",," as one <unk>).
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation("isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                   unk_token=UNK, clean_up_tokenization_spaces=True)


def not_text_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that are not text a model may write: <pad> and <unk> (unless one is <eos>,
    as for tokenizers whose pad is their eos). ``generate`` never samples them, and
    ``completion_logprobs`` scores under the same renormalised distribution."""
    ids = {tokenizer.pad_token_id, getattr(tokenizer, "unk_token_id", None)}
    return tuple(sorted(i for i in ids if i is not None and i != tokenizer.eos_token_id))


# ---------------------------------------------------------------------------------------------
# Base model: build, pretrain, save, load
# ---------------------------------------------------------------------------------------------

def make_base_model(tokenizer, preset: str = "tiny", seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of the given size (see ``PRESETS``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, **PRESETS[preset].sizes,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id,
                        # exact (erf) GELU: in torch's CPU kernels 2-5x faster than GPT-2's tanh one
                        activation_function="gelu",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # RL wants dropout off
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"      # else transformers warns that it guessed it
    return model


def encode_corpus(tokenizer, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) for ``prompt answer <eos>`` lines, right-padded. Only the answer and
    <eos> are predicted (label -100 elsewhere): the model learns to answer, not to ask."""
    texts = [f"{prompt} {answer}{tokenizer.eos_token}" for prompt, answer, *_ in rows]
    # the corpus repeats its lines (20,000 rows, ~5,000 distinct): each is encoded once
    unique = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    batch = tokenizer(list(unique), padding=True)
    rows_of = torch.tensor([unique[text] for text in texts])
    input_ids = torch.tensor(batch.input_ids)[rows_of]
    attention_mask = torch.tensor(batch.attention_mask)[rows_of]
    prompts = list(dict.fromkeys(prompt for prompt, *_ in rows))
    encoded = tokenizer(prompts, add_special_tokens=False).input_ids
    length = {prompt: len(ids) for prompt, ids in zip(prompts, encoded)}
    prompt_lens = torch.tensor([length[prompt] for prompt, *_ in rows])
    is_prompt = torch.arange(input_ids.shape[1])[None] < prompt_lens[:, None]
    return input_ids, input_ids.masked_fill((attention_mask == 0) | is_prompt, -100)


def answer_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """-mean log p(w_t | w_<t) over the tokens with a label (not -100): the loss
    ``model(..., labels=labels).loss`` computes, with the LM head run only where a token is
    predicted (the answers, a third of the positions), not at every position."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    predicted = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][predicted])
    return F.cross_entropy(logits.float(), targets[predicted])


def pretrain(model, tokenizer, world, steps: int = 800, batch_size: int = 64, lr: float = 1e-2,
             corpus_size: int = 20_000, seed: int = 0, device: str | None = None,
             warmup: float = 0.05, length_chunks: int = 2, callbacks=(),
             progress: bool = True) -> list[float]:
    """Next-token pretraining on the world's internet: minimise -sum_t log p(w_t | w_<t).

    Returns the loss of every step. AdamW with a linear warm-up over the first ``warmup`` share
    of the steps and a cosine decay. The defaults are the tiny preset's (``PRESETS``).
    length_chunks: speed only (see ``PPOConfig.length_chunks``); 1 on a GPU.
    callbacks: functions (stage, step, metrics) called after each step (``callbacks.py``).
    progress: show a progress bar.
    """
    device = pick_device(device)
    seed_everything(seed)
    input_ids, labels = encode_corpus(tokenizer, world.corpus(corpus_size, seed=seed))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01,
                                  fused=fused(device))
    warmup = max(1, int(steps * warmup))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    history = []
    ends = (labels != -100).cumsum(1).argmax(1) + 1          # each row's length without padding
    for _ in (bar := tqdm(range(steps), desc="pretraining", disable=not progress)):
        idx = torch.randint(len(input_ids), (batch_size,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        n_tokens, loss = int((labels[idx] != -100).sum()), 0.0
        # Speed: the batch in length_chunks groups of similar length, each cut at its longest row
        # and weighted by its share of the predicted tokens: the gradient of one pass, less padding.
        for rows in idx[ends[idx].argsort()].tensor_split(length_chunks):
            width = int(ends[rows].max())
            x, y = input_ids[rows, :width].to(device), labels[rows, :width].to(device)
            share = int((y != -100).sum()) / n_tokens
            # all ones: right padding sits after every real token, which a causal model never
            # lets it see (it only says so to transformers, which warns about pads otherwise)
            ones = torch.ones_like(x)
            with autocast(device):
                chunk_loss = answer_loss(model, x, ones, y) * share
            chunk_loss.backward()
            loss += chunk_loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(loss)
        bar.set_postfix(loss=f"{history[-1]:.3f}")
        log_step(callbacks, "pretrain", len(history),
                 {"loss": history[-1], "learning_rate": schedule.get_last_lr()[0]})
    model.eval()
    return history


def save_model(model, tokenizer, path) -> None:
    """Save model and tokenizer as a Hugging Face directory (``save_pretrained``)."""
    os.makedirs(path, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)


def check_model_dir(path) -> str:
    """``path`` as a string if it is a folder with a ``config.json``; FileNotFoundError if not."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path!r} is not a model directory (no config.json in it); "
                                "give the folder that save_pretrained wrote")
    return path


def load_model(path, device: str | None = None):
    """(model, tokenizer) from a local Hugging Face causal-LM directory: ours or your own.

    Never downloads: a path that is not a directory with a config is an error. A tokenizer
    without a pad token pads with its <eos> (said in a warning): padding is masked everywhere,
    and rewards are read at the last real token. ``UnusableModel`` says what else is wrong.
    """
    path = check_model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        raise UnusableModel(f"no tokenizer could be loaded from {path!r}; save the model's "
                            f"tokenizer there with tokenizer.save_pretrained({path!r})") from None
    if tokenizer.eos_token is None:
        raise UnusableModel(f"the tokenizer in {path!r} has no eos token, so no answer could end; "
                            "set one (tokenizer.eos_token = ...) and save it again")
    if tokenizer.pad_token is None:  # many causal LMs ship without one; reuse <eos>
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("the tokenizer in %r has no pad token: padding with its eos token %r "
                    "(id %d) instead", path, tokenizer.eos_token, tokenizer.eos_token_id)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UnusableModel(f"{path!r} holds no causal language model transformers can load "
                            f"({e}); give a folder that AutoModelForCausalLM.save_pretrained "
                            "wrote, weights included") from None
    if model.loss_type is None:          # GPT-2's class name hides it: say which, quietly
        model.loss_type = "ForCausalLM"
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise UnusableModel(f"the tokenizer in {path!r} has {len(tokenizer)} tokens but the model "
                            f"only {model.get_input_embeddings().num_embeddings} embeddings; "
                            "model.resize_token_embeddings(len(tokenizer)) and save it again")
    return model.to(pick_device(device)).eval(), tokenizer


def check_context(model, tokenizer, prompts, max_new_tokens: int, name: str = "the model"):
    """UnusableModel if the longest of ``prompts`` and an answer of ``max_new_tokens`` do not
    fit in the model's context (``config.max_position_embeddings``; no limit if it has none)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
    if limit is not None and longest + max_new_tokens > limit:
        raise UnusableModel(
            f"{name} reads at most {limit} tokens (config.max_position_embeddings), but the "
            f"longest prompt is {longest} tokens and an answer up to {max_new_tokens} more: "
            f"{longest + max_new_tokens} in all; use a model with a longer context")


def base_model_path(runs_dir, task: str, preset: str = "tiny", steps: int | None = None,
                    seed: int = 0) -> str:
    """Where ``get_base_model`` caches a base model, ``runs_dir/base-TASK-PRESET-STEPS-seedS``
    (``steps``: the preset's by default); it is there once its ``loss_history.json`` is."""
    steps = PRESETS[preset].pretrain_steps if steps is None else steps
    return os.path.join(runs_dir, f"base-{task}-{preset}-{steps}-seed{seed}")


def get_base_model(world, runs_dir="runs", preset: str = "tiny", steps: int | None = None,
                   seed: int = 0, device: str | None = None, callbacks=(), progress: bool = True):
    """The base model for ``world``, shared by all lessons: loaded from ``base_model_path`` if
    a lesson already made it, else pretrained with the preset's settings (``PRESETS``; ``steps``
    overrides its steps) and saved there (with a progress bar unless ``progress`` is False). Returns (model, tokenizer, path,
    pretraining's loss history, saved beside the model and loaded with it)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    settings = PRESETS[preset]
    steps = settings.pretrain_steps if steps is None else steps
    path = base_model_path(runs_dir, world.task.name, preset, steps, seed)
    if os.path.isfile(os.path.join(path, "loss_history.json")):
        model, tokenizer = load_model(path, device)
        with open(os.path.join(path, "loss_history.json")) as f:
            return model, tokenizer, path, json.load(f)
    tokenizer = build_tokenizer(world)
    model = make_base_model(tokenizer, preset, seed)
    history = pretrain(model, tokenizer, world, **{**settings.pretraining, "steps": steps},
                       seed=seed, device=device, callbacks=callbacks, progress=progress)
    save_model(model, tokenizer, path)
    with open(os.path.join(path, "loss_history.json"), "w") as f:  # written last: marks it complete
        json.dump(history, f)
    return model, tokenizer, path, history


# ---------------------------------------------------------------------------------------------
# Generation and log-probabilities: the one way every stage samples and scores
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Completions:
    """A batch of sampled completions (shapes in the module docstring)."""
    prompts: list[str]
    texts: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    ended: torch.Tensor            # (B,) bool: the completion closed with <eos>
    not_text: tuple = ()           # token ids never sampled (``not_text_ids``)
    top_k: int | None = None       # sampled from the top_k tokens only (None: all)
    logprobs: torch.Tensor | None = None   # (B, C) log pi(y_t) as sampled (``generate`` only)
    entropy: torch.Tensor | None = None    # (B, C) entropy of pi( . | s_t) as sampled (the same)

    @property
    def input_ids(self):
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self):
        return torch.cat([self.prompt_mask, self.completion_mask], 1)

    @property
    def lengths(self):
        return self.completion_mask.sum(1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def encode_prompts(tokenizer, prompts, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask."""
    ids = tokenizer(list(prompts), add_special_tokens=False).input_ids     # one batched call
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    return input_ids, mask


def next_token_logits(logits: torch.Tensor, temperature: float = 1.0, not_text=(),
                      top_k: int | None = None) -> torch.Tensor:
    """The logits a token is sampled from: logits / temperature, with the ids in ``not_text``
    and (with ``top_k``) all but the k likeliest set to -inf. Shared by ``generate`` and
    ``completion_logprobs``, so a sample is always scored under the distribution it came from."""
    logits = logits.float() / max(temperature, 1e-6)
    if not_text:
        logits[..., list(not_text)] = float("-inf")
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v of each next-token distribution (last dim), in nats; 0 log 0 = 0."""
    return -torch.xlogy(probs, probs).sum(-1)


def sample(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One token a row of ``probs`` (B, V): the exponential race, y = argmax_j p_j / E_j with
    E_j ~ Exp(1) independent (P(y = j) = p_j; ``torch.multinomial``'s own method), with
    E_j = -log U_j from uniforms, which torch draws 6x faster than exponentials. A token of
    probability 0 scores 0 and is never drawn."""
    uniforms = torch.rand(probs.shape, generator=generator, device=probs.device)
    return (probs / -uniforms.log()).argmax(-1)


@torch.no_grad()
def generate(model, tokenizer, prompts, max_new_tokens: int = 24, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None) -> Completions:
    """Sample one completion per prompt: y_t ~ softmax(logits_t / temperature), with a KV cache.

    Stops a row at <eos>; rows that never emit it are cut at ``max_new_tokens`` (``ended`` False).
    Never samples <pad> or <unk> (``not_text_ids``). ``top_k`` keeps only the k likeliest tokens
    at each step; the batch remembers it, so ``completion_logprobs`` scores the same distribution.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = len(prompts)
    mask, tokens, past = prompt_mask, prompt_ids, None
    not_text = not_text_ids(tokenizer)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out, out_logp, out_entropy = [], [], []
    for _ in range(max_new_tokens):
        pos = position_ids(mask)[:, -tokens.shape[1]:]
        result = model(input_ids=tokens, attention_mask=mask, position_ids=pos,
                       past_key_values=past, use_cache=True)
        past = result.past_key_values
        logits = next_token_logits(result.logits[:, -1], temperature, not_text, top_k)
        logp_all = logits.log_softmax(-1)
        probs = logp_all.exp()
        token = sample(probs, generator)
        token = torch.where(done, torch.full_like(token, pad), token)
        out_logp.append(logp_all.gather(1, token[:, None]).squeeze(1).masked_fill(done, 0.0))
        out_entropy.append(entropy(probs))
        out.append(token)
        done |= token == eos
        tokens = token[:, None]
        mask = torch.cat([mask, (~done | (token == eos)).long()[:, None]], 1)
        if done.all():
            break
    completion_ids = torch.stack(out, 1)
    is_eos = completion_ids == eos
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    completion_mask = (~after_eos).long()
    texts = tokenizer.batch_decode(completion_ids.masked_fill(after_eos, pad),
                                   skip_special_tokens=True)
    return Completions(list(prompts), [t.strip() for t in texts], prompt_ids, prompt_mask,
                       completion_ids, completion_mask, is_eos.any(1), not_text, top_k,
                       torch.stack(out_logp, 1) * completion_mask,
                       torch.stack(out_entropy, 1) * completion_mask)


def encode_completions(tokenizer, prompts, completions, device) -> Completions:
    """The ``Completions`` layout for given texts (each closed with <eos>), e.g. labelled pairs."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    ids = [tokenizer(" " + c, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
           for c in completions]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    completion_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
    completion_mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids],
                                   device=device)
    ended = torch.ones(len(ids), dtype=torch.bool, device=device)
    return Completions(list(prompts), list(completions), prompt_ids, prompt_mask,
                       completion_ids, completion_mask, ended, not_text_ids(tokenizer))


def completion_logprobs(model, batch: Completions, temperature: float = 1.0,
                        return_entropy: bool = False):
    """log pi(y_t | x, y_<t) for every completion token, at the sampling temperature: (B, C).

    Scoring at the temperature we sampled with keeps these log-probs consistent with the
    samples (Huang et al. 2024, detail "temperature"), and under the batch's ``top_k`` and
    ``not_text`` filter (``next_token_logits``). Padding positions hold 0.
    With ``return_entropy``, also the entropy of each next-token distribution, (B, C).
    """
    input_ids, mask = batch.input_ids, batch.attention_mask
    C = batch.completion_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask),
                   logits_to_keep=C + 1).logits        # the LM head only where it predicts y_t
    logits = next_token_logits(logits[:, :-1], temperature, batch.not_text, batch.top_k)
    logp_all = F.log_softmax(logits, -1)
    real = batch.completion_mask.bool()
    logp = logp_all.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    logp = logp.masked_fill(~real, 0.0)
    if not return_entropy:
        return logp
    return logp, entropy(logp_all.exp()) * batch.completion_mask
