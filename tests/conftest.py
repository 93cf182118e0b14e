"""Shared fixtures: one world and one base model for the whole test session.

The base model is cached in notebooks/runs/ (git-ignored), the folder the lessons use, so a
test run that comes before the notebooks pretrains it once for both.
"""
import pathlib

import pytest
import torch

from rlhf_lite import SimulatedLabeler, World, get_base_model, set_threads

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNS = REPO / "notebooks" / "runs"

collect_ignore = ["browser"]  # the browser test's own notebook runs in JupyterLab, not under nbval


@pytest.fixture(scope="session")
def world():
    return World("trivia", seed=0)


@pytest.fixture(scope="session")
def base(world):
    """(model, tokenizer) of the default base model, pretrained once per cache, on one thread
    as the lessons pretrain it (``set_threads``), so that both make the same model."""
    threads = torch.get_num_threads()
    set_threads(1)
    torch.manual_seed(0)
    model, tokenizer, _, _ = get_base_model(world, runs_dir=str(RUNS))
    torch.set_num_threads(threads)
    return model, tokenizer


def tiny_llama(tokenizer, layers: int = 1, heads: int = 2, context: int = 128, seed: int = 0):
    """A freshly initialised Llama of a few thousand parameters over ``tokenizer``: the "model
    of your own" the tests bring (any Hugging Face causal LM must work in place of ours)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=context,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def reward_model(world, base):
    """The default reward model on 600 pairs of the helpful simulated labeler (seed 0), shared
    by the tests of PPO and of the critic-free methods."""
    from rlhf_lite.preferences import make_preference_dataset
    from rlhf_lite.reward_model import train_reward_model
    model, tokenizer = base
    labeler = SimulatedLabeler(world, "helpful", seed=0)
    comparisons = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=600, seed=0)
    reward_model, _ = train_reward_model(model, tokenizer, comparisons,
                                         max_new_tokens=world.max_new_tokens)
    return reward_model


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: on a shared, busy CPU two threads wait on each other
    and run many times slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
