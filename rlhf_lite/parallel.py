"""Data-parallel runs: W processes, each with its share of every batch, through ``accelerate``.

Start the command line (or any script of yours) under a launcher::

    torchrun --nproc_per_node 2 -m rlhf_lite pipeline --out runs/two
    accelerate launch --num_processes 2 -m rlhf_lite pipeline --out runs/two

gloo on the CPU, NCCL on GPUs (process p on its machine's GPU p). Each process samples its
share of the episodes and computes its share of the loss; DDP, through
``accelerate.Accelerator.prepare_model``, averages the gradients, so every process takes the
step that one process would take on the whole batch. That holds only if each share's loss is
a sum over its items divided by the count of the *whole* batch::

    L_p = sum_(i in share p) l_i / (N / W)      (1/W) sum_p grad L_p = grad (1/N) sum_i l_i

with N the items (real tokens, pairs) of all W processes together (``per_process``): dividing
by the share's own count would weigh a share of few tokens like one of many. Statistics (the
mean and std that whiten the advantages, the numbers logged) are averaged over the processes
(``average``). Only process 0 writes files and prints.

Started without a launcher there is one process: accelerate is never imported, and every
function here gives back its input unchanged.
"""
from __future__ import annotations

import contextlib
import os

import torch

_accelerator = None


def processes() -> int:
    """W: how many processes run together (WORLD_SIZE, set by torchrun and accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's number, 0 to W - 1."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in the process that writes files and prints: process 0 (or the only one)."""
    return rank() == 0


def local_gpu() -> str:
    """This process's GPU: cuda:LOCAL_RANK."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise RuntimeError(f"process {rank()} wants GPU {local} but this machine has "
                           f"{torch.cuda.device_count()}; launch at most that many processes a "
                           "machine, or run on the CPU with --device cpu")
    return f"cuda:{local}"


def accelerator(device=None):
    """The run's ``accelerate.Accelerator`` (made on first use: gloo if ``device`` is the CPU,
    else NCCL). Only in a launched run."""
    global _accelerator
    if _accelerator is not None and device is not None:
        if torch.device(device).type != _accelerator.device.type:
            raise RuntimeError(f"the processes of this run joined on {_accelerator.device.type}; "
                               f"{device} cannot join them: use one device type for the run")
    if _accelerator is None:
        try:
            from accelerate import Accelerator
        except ImportError:
            raise ImportError(f"this run was launched with {processes()} processes, which needs "
                              "accelerate: pip install 'rlhf-lite[parallel]'") from None
        cpu = (torch.device(device).type == "cpu" if device is not None
               else not torch.cuda.is_available())
        _accelerator = Accelerator(cpu=cpu)
        if not is_main_process():                # only process 0 prints: no loading bars either
            from transformers.utils import logging as transformers_logging
            transformers_logging.disable_progress_bar()
    return _accelerator


def start(device) -> None:
    """In a launched run, join the other processes on ``device``'s backend; else nothing."""
    if processes() > 1:
        accelerator(device)


def data_parallel(model):
    """``model`` wrapped in DDP (``Accelerator.prepare_model``) to average its gradients over
    the processes; ``model`` itself when there is one process. Train through the wrapper (its
    forward), and use ``model`` for everything else: it holds the same weights."""
    if processes() == 1:
        return model
    device = next(model.parameters()).device
    return accelerator(device).prepare_model(model, device_placement=False)


def total(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes (no gradient flows through the sum)."""
    if processes() == 1:
        return x
    acc = accelerator(x.device)
    return acc.reduce(x.detach().to(acc.device), "sum").to(x.device)


def average(x: torch.Tensor) -> torch.Tensor:
    """``x`` averaged over the processes (no gradient flows through the mean)."""
    return x if processes() == 1 else total(x) / processes()


def per_process(count: torch.Tensor) -> torch.Tensor:
    """N / W, the denominator of a share's loss (module docstring): ``count`` (of this share)
    summed over the processes, at least 1, divided by W. With one process: max(count, 1)."""
    return total(count).clamp(min=1) / processes()


def share(items):
    """This process's share of a batch (a list or a tensor): its contiguous 1/W."""
    n, w, r = len(items), processes(), rank()
    return items[r * n // w:(r + 1) * n // w]


def minibatches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``order`` cut into minibatches of ``size``, as this process's share of each. A last
    minibatch smaller than W joins the one before: every process needs a share of each."""
    chunks = list(order.split(size))
    if len(chunks) > 1 and len(chunks[-1]) < processes():
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return [share(chunk) for chunk in chunks]


def average_numbers(entry: dict, device=None) -> dict:
    """``entry`` with each float value averaged over the processes (a log entry)."""
    if processes() == 1:
        return entry
    keys = [k for k, v in entry.items() if isinstance(v, float)]
    acc = accelerator(device)
    values = average(torch.tensor([entry[k] for k in keys], dtype=torch.float64, device=acc.device))
    return {**entry, **dict(zip(keys, values.tolist()))}


def from_main(obj):
    """Process 0's ``obj``, in every process (what the others pass is ignored)."""
    if processes() == 1:
        return obj
    from accelerate.utils import broadcast_object_list
    accelerator()
    return broadcast_object_list([obj], from_process=0)[0]


def barrier() -> None:
    """Wait until every process is here. Not accelerate's ``wait_for_everyone``: that names
    GPU LOCAL_RANK even in a gloo run on the CPU, which fails ("invalid device ordinal") on a
    machine with fewer GPUs than processes. A gloo barrier here runs on the CPU."""
    if processes() > 1:
        device = accelerator().device
        if device.type == "cuda":
            torch.distributed.barrier(device_ids=[device.index or 0])
        else:
            torch.distributed.barrier()


@contextlib.contextmanager
def main_process_first():
    """A context in which process 0 runs first and the others after it (e.g. it pretrains and
    caches the base model, they load it)."""
    if not is_main_process():
        barrier()                                # wait for process 0 to finish the block
    yield
    if is_main_process():
        barrier()                                # let the others in


def finish() -> None:
    """Wait for every process, then close the process group (at the end of a launched run)."""
    if processes() > 1 and _accelerator is not None:
        barrier()
        _accelerator.end_training()
