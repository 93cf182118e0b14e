"""Shared fixtures: one world and one base model for the whole test session.

The base model is cached in notebooks/runs/ (git-ignored), the folder the lessons use, so a
test run that comes before the notebooks pretrains it once for both.
"""
import pathlib

import pytest
import torch

from rlhf_lite import World, get_base_model, set_threads

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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: on a shared, busy CPU two threads wait on each other
    and run many times slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
