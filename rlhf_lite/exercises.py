"""Exercises that count: you write a piece of RLHF, ``check`` holds it against the package's
own, and once it passes, ``use`` makes yours the one that trains.

    EXERCISES         the names, in lesson order
    reference(name)   the package's version: the solutions live in the package, not in a notebook
    check(name, fn)   runs ``fn`` and the reference on random inputs and on the edge cases that
                      matter (padding, ties, both sides of the clip, the last token); prints what
                      differs (expected against got, on which case, the largest absolute
                      difference) or that ``fn`` is right; returns True or False, never raises
    use(name, fn)     ``fn`` if ``check`` passes, else the package's version, with a note

A lesson's exercise cell is a stub (the signature, the equation, ``raise NotImplementedError``);
until you write it, the lesson runs on the package's version:

    def my_gae(rewards, values, mask, gamma, lam):
        raise NotImplementedError
    gae = use("gae", my_gae)                      # the package's gae until yours passes
    trainer = PPOTrainer(..., advantages_fn=gae)  # then yours computes every advantage

As in Spinning Up (the learner's function is plugged into a real run) and nn-zero-to-hero
(``cmp``: exact, approximate, largest difference).

    name                  lesson  reference                          trains through
    bradley_terry_loss    2       reward_model.bradley_terry_loss    train_reward_model(loss_fn=)
    reinforce_step        3       ppo.reinforce_step                 the lesson's own loop
    kl_penalised_rewards  3       ppo.per_token_rewards              PPOTrainer(rewards_fn=)
    gae                   3       ppo.gae                            PPOTrainer(advantages_fn=)
    clipped_policy_loss   3       ppo.policy_loss, its loss alone    PPOTrainer(policy_loss_fn=)
    dpo_loss              4       dpo.dpo_loss, its loss alone       train_dpo(loss_fn=)
    best_of_n             4       beyond.pick_best                   best_of_n(pick=)
    group_advantages      5       critic_free.grpo_advantages        GRPOTrainer.group_advantages
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import traceback
from typing import Callable

import torch

from . import beyond, critic_free, dpo, ppo, reward_model

TOLERANCE = dict(rtol=1e-4, atol=1e-5)
"""How close counts as the same: float32 sums in another order differ by about 1e-7."""


@dataclasses.dataclass
class Case:
    """One trial: the inputs, what the case tests and what to look at if it fails."""
    name: str
    args: tuple
    hint: str = ""
    general: bool = False     # random inputs, no edge case: a failure here says least


@dataclasses.dataclass
class Exercise:
    """One exercise: the package's function, the cases, and how its outputs are compared."""
    reference: Callable
    cases: Callable[[], list]        # () -> [Case], seeded: the same cases every time
    outputs: tuple = ("output",)     # names of what the function returns
    grads: tuple = ()                # inputs whose gradient must match too (named last in outputs)
    trial: Callable | None = None    # (fn, case) -> (names, outputs) when fn(*args) is not enough
    compare: Callable | None = None  # (expected, got, case) -> what differs, or None

    @property
    def where(self) -> str:
        return f"{self.reference.__module__}.{self.reference.__qualname__}"


def _loss_alone(fn):
    """``fn``'s loss without the diagnostics it also returns (what a learner writes)."""
    @functools.wraps(fn)
    def loss(*args, **kwargs):
        return fn(*args, **kwargs)[0]
    return loss


# ---------------------------------------------------------------------------------------------
# The cases: random inputs, then the edge cases that matter
# ---------------------------------------------------------------------------------------------

def _mask(lengths, width):
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()


def _bradley_terry_cases():
    g = torch.Generator().manual_seed(0)
    r = lambda n: 3 * torch.randn(n, generator=g)  # noqa: E731
    no = lambda n: torch.zeros(n, dtype=torch.bool)  # noqa: E731
    flags = lambda *bits: torch.tensor(bits, dtype=torch.bool)  # noqa: E731
    margins = torch.tensor([0.0, 2.0, 0.5, 1.0, 3.0, 0.0])
    return [
        Case("random preferences", (r(16), r(16), no(16), no(16), 0.0),
             "L = -log sigmoid(r_chosen - r_rejected), averaged over the pairs: the sign, the mean",
             general=True),
        Case("ties", (r(6), r(6), flags(1, 0, 1, 0, 0, 1), no(6), 0.0),
             "a tie is a 50/50 label: L_i = -1/2 [log sigmoid(d_i) + log sigmoid(-d_i)]"),
        Case("both bad", (r(6), r(6), no(6), flags(0, 1, 0, 0, 1, 0), 0.0),
             "both-bad pairs are left out: average over the other pairs only"),
        Case("every pair both bad", (r(3), r(3), no(3), flags(1, 1, 1), 0.0),
             "nothing left to average: the loss is 0 (not nan), still computed from the rewards"),
        Case("margin (one for all pairs)", (r(6), r(6), flags(0, 0, 1, 0, 0, 0), no(6), 1.0),
             "a preference with margin m: -log sigmoid(d - m); a tie takes no margin"),
        Case("margin (one a pair), ties and both bad",
             (r(6), r(6), flags(0, 1, 0, 0, 0, 0), flags(0, 0, 0, 1, 0, 0), margins),
             "margin may be a tensor, one m_i a pair: -log sigmoid(d_i - m_i)"),
    ]


def _rewards_cases():
    g = torch.Generator().manual_seed(1)
    kl = lambda mask: torch.randn(mask.shape, generator=g).abs() * mask  # noqa: E731
    scores = lambda n: 2 * torch.randn(n, generator=g)  # noqa: E731
    full, ragged, short = _mask([6, 6, 6], 6), _mask([5, 2, 6, 3], 6), _mask([1, 4], 4)
    garbage = _mask([3, 1, 5], 5)
    return [
        Case("full-length episodes (cut before <eos>)", (scores(3), kl(full), full, 0.1),
             "r_t = -beta kl_t on every token; the score is added on the last one", general=True),
        Case("episodes of different lengths", (scores(4), kl(ragged), ragged, 0.1),
             "the score goes on each episode's last real token, index mask[i].sum() - 1"),
        Case("kl is not 0 on padding", (scores(3), torch.rand(3, 5, generator=g) + 1, garbage, 0.2),
             "padding earns nothing: multiply the penalty by the mask"),
        Case("a one-token episode (just <eos>)", (scores(2), kl(short), short, 0.1),
             "an episode of one token gets its score at t = 0"),
        Case("kl_coef = 0", (scores(3), kl(ragged[:3]), ragged[:3], 0.0),
             "with beta = 0 only the score is left, on the last real token"),
    ]


def _gae_cases():
    g = torch.Generator().manual_seed(2)
    mask = _mask([6, 3, 1, 5], 6)
    rewards = torch.randn(4, 6, generator=g) * mask
    values = torch.randn(4, 6, generator=g)                   # past each episode's end: padding
    full = (torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.ones(3, 5))
    example = (torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]]),
               torch.tensor([[0.5, 0.2, 0.4], [1.0, -1.0, 3.0]]), _mask([3, 2], 3))
    last = "after an episode's last real token there is no next state: V_{T+1} = 0"
    return [
        Case("a worked example (gamma 0.9, lam 0.8)", (*example, 0.9, 0.8),
             "delta_t = r_t + gamma V_{t+1} - V_t, with V_{t+1} = 0 after the last real token "
             "(episode 1 ends at t = 1: its 3.0 is padding); A_t = delta_t + gamma lam A_{t+1}; "
             "R_t = A_t + V_t"),
        Case("full-length episodes (gamma 1, lam 0.95)", (*full, 1.0, 0.95),
             "the last token too: " + last, general=True),
        Case("episodes of different lengths, values on padding", (rewards, values, mask, 1.0, 0.95),
             last + ", whatever the padding holds; A_t and R_t are 0 on padding"),
        Case("lam = 1: Monte Carlo", (rewards, values, mask, 0.9, 1.0),
             "with lam = 1, R_t is the discounted sum of the rewards from t to the end"),
        Case("lam = 0: one-step TD", (rewards, values, mask, 0.9, 0.0),
             "with lam = 0, A_t = delta_t = r_t + gamma V_{t+1} - V_t"),
    ]


def _clip_cases():
    g = torch.Generator().manual_seed(3)
    logp_old = -3 * torch.rand(6, 8, generator=g)
    mask = _mask([8, 5, 7, 2, 8, 4], 8)
    noise = lambda: torch.randn(6, 8, generator=g)  # noqa: E731
    ratios = lambda *r: torch.tensor([r]).log()  # noqa: E731
    zeros, ones = torch.zeros(1, 5), torch.ones(1, 5)
    padded = (torch.tensor([[-1.0, -2.0, 5.0, 5.0], [-0.5, 9.0, 9.0, 9.0]]),
              torch.tensor([[-1.2, -1.5, 0.0, 0.0], [-0.4, 0.0, 0.0, 0.0]]),
              torch.tensor([[1.0, -2.0, 50.0, 50.0], [0.5, 50.0, 50.0, 50.0]]), _mask([3, 1], 4))
    return [
        Case("random batch with padding",
             (logp_old + 0.4 * noise(), logp_old, noise() * mask, mask, 0.2),
             "rho = exp(logp - logp_old); L = -mean over real tokens of min(rho A, clip(rho) A)",
             general=True),
        Case("A > 0: rho above 1 + eps", (ratios(1.5, 2.0, 1.1, 0.6, 1.0), zeros, ones, ones, 0.2),
             "for A > 0 the gain stops at rho = 1 + eps: clip(rho, 1 - eps, 1 + eps)"),
        Case("A < 0: rho below 1 - eps", (ratios(0.5, 0.7, 0.9, 1.4, 1.0), zeros, -ones, ones, 0.2),
             "for A < 0 the gain stops at rho = 1 - eps: clip on both sides, then the min"),
        Case("padding holds large numbers", (*padded, 0.2),
             "only real tokens count: sum(x * mask) / sum(mask), not a mean over every column"),
        Case("another clip range (eps 0.1)",
             (logp_old + 0.3 * noise(), logp_old, noise() * mask, mask, 0.1),
             "use the clip_range given, not 0.2"),
    ]


def _dpo_cases():
    g = torch.Generator().manual_seed(4)
    logps = lambda: -20 * torch.rand(8, generator=g)  # noqa: E731
    chosen, rejected = logps(), logps()
    hint = "beta times each log-ratio log pi/pi_ref, chosen minus rejected, inside -log sigmoid"
    same = (chosen.clone(), rejected.clone(), chosen, rejected)
    return [
        Case("random pairs, beta 0.5", (logps(), logps(), logps(), logps(), 0.5), hint,
             general=True),
        Case("the policy is the reference", (*same, 0.5),
             "policy = reference: every pair costs log 2"),
        Case("beta 0.1", (logps(), logps(), logps(), logps(), 0.1),
             "beta multiplies the log-ratios inside the sigmoid"),
    ]


def _best_of_n_cases():
    g = torch.Generator().manual_seed(5)
    texts = lambda b, n: [[f"answer {i}.{j}" for j in range(n)] for i in range(b)]  # noqa: E731
    ties = torch.tensor([[0.5, 2.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    return [
        Case("3 prompts x 5 candidates", (texts(3, 5), torch.randn(3, 5, generator=g)),
             "for each prompt (row) keep the candidate with the highest score", general=True),
        Case("every score negative", (texts(3, 4), -1 - torch.rand(3, 4, generator=g)),
             "the best may still be below 0: start from the row's first score, not from 0"),
        Case("n = 1", (texts(2, 1), torch.randn(2, 1, generator=g)), "one candidate: it is kept"),
        Case("as many prompts as candidates", (texts(4, 4), torch.randn(4, 4, generator=g)),
             "scores[i, j] is prompt i's candidate j: take the best along each row (dim 1)"),
        Case("equal best scores", (texts(2, 4), ties),
             "any of the equally best candidates is right"),
    ]


def _best_of_n_compare(expected, got, case):
    candidates, scores = case.args
    if not isinstance(got, (list, tuple)) or len(got) != len(candidates):
        return f"expected a list of {len(candidates)} texts (one a prompt), got {_describe(got)}"
    for i, (row, text) in enumerate(zip(candidates, got)):
        best = scores[i].max().item()
        if text not in row:
            return f"prompt {i}: {text!r} is not one of its candidates {row}"
        if scores[i, row.index(text)].item() != best:
            return (f"prompt {i}: expected {expected[i]!r} (score {best:+.3f}), got {text!r} "
                    f"(score {scores[i, row.index(text)].item():+.3f})")
    return None


@functools.lru_cache(maxsize=1)
def _tiny_policy():
    """A random tiny GPT-2 over the trivia world's words, whose answers end at random lengths
    (its final layer-norm bias points at <eos>), and 12 prompts of different lengths."""
    from .models import build_tokenizer, make_base_model
    from .world import World
    world = World("trivia", seed=0)
    tokenizer = build_tokenizer(world)
    model = make_base_model(tokenizer, "tiny", seed=0).eval()
    with torch.no_grad():
        eos = model.lm_head.weight[tokenizer.eos_token_id]
        model.transformer.ln_f.bias.copy_(3.5 * eos / eos.pow(2).sum())   # P(<eos>) ~ 1/10
    prompts = sorted(set(world.prompts), key=len)
    return model, tokenizer, [prompts[i * len(prompts) // 12] for i in range(12)]


def _reinforce_cases():
    return [Case("one step, answers of different lengths", (1,),
                 "R = reward(batch.prompts, batch.texts); log pi(y|x) sums the tokens' log-probs; "
                 "L = -mean_i (R_i - mean R) log pi(y_i|x_i); generate with seed=seed"),
            Case("two steps in a row", (2,), "zero the gradients before each backward, then step")]


def _reinforce_trial(fn, case):
    """``case.args[0]`` steps of ``fn`` (SGD, so the update is the gradient) on a copy of the
    tiny policy; the rewards of each step and how far the parameters moved."""
    model, tokenizer, prompts = _tiny_policy()
    policy = copy.deepcopy(model)
    before = torch.cat([p.detach().flatten() for p in policy.parameters()])
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    reward = lambda prompts, texts: [len(t.split()) - 2.0 for t in texts]  # noqa: E731
    rewards = [fn(policy, optimizer, tokenizer, prompts, reward, 8, seed)
               for seed in range(case.args[0])]
    after = torch.cat([p.detach().flatten() for p in policy.parameters()])
    names = [f"the rewards R returned by step {k + 1}" for k in range(len(rewards))]
    return (*names, "the change of the policy's parameters"), (*rewards, after - before)


def _group_cases():
    g = torch.Generator().manual_seed(7)
    equal = torch.randn(5, 4, generator=g)
    equal[1] = 0.7                                          # four answers that score the same
    return [
        Case("random groups", (torch.randn(6, 4, generator=g), True, 1e-4),
             "A_i = (R_i - mean_j R_j) / (std_j R_j + eps), over each row (one row a question)",
             general=True),
        Case("a group of equal rewards", (equal, True, 1e-4),
             "a row whose rewards are all equal has std 0: its advantages are 0, not nan"),
        Case("groups of two", (torch.randn(5, 2, generator=g), True, 1e-4),
             "the sample std (divide by k - 1, torch's default), not the population one"),
        Case("Dr. GRPO: no std", (torch.randn(4, 8, generator=g), False, 1e-4),
             "with scale_by_std=False only the row mean is taken off"),
    ]


EXERCISES_TABLE = {
    "bradley_terry_loss": Exercise(reward_model.bradley_terry_loss, _bradley_terry_cases,
                                   ("loss", "d loss / d r_chosen", "d loss / d r_rejected"),
                                   (0, 1)),
    "reinforce_step": Exercise(ppo.reinforce_step, _reinforce_cases, trial=_reinforce_trial),
    "kl_penalised_rewards": Exercise(ppo.per_token_rewards, _rewards_cases, ("rewards r_t",)),
    "gae": Exercise(ppo.gae, _gae_cases, ("advantages A_t", "returns R_t")),
    "clipped_policy_loss": Exercise(_loss_alone(ppo.policy_loss), _clip_cases,
                                    ("loss", "d loss / d logp"), (0,)),
    "dpo_loss": Exercise(_loss_alone(dpo.dpo_loss), _dpo_cases,
                         ("loss", "d loss / d policy_chosen_logps",
                          "d loss / d policy_rejected_logps"), (0, 1)),
    "best_of_n": Exercise(beyond.pick_best, _best_of_n_cases, ("kept texts",),
                          compare=_best_of_n_compare),
    "group_advantages": Exercise(critic_free.grpo_advantages, _group_cases, ("advantages A_i",)),
}
"""name -> Exercise: the reference, the cases and how to compare (lessons in the docstring)."""

EXERCISES = tuple(EXERCISES_TABLE)
"""The exercises' names, in lesson order."""


def reference(name: str) -> Callable:
    """The package's version of exercise ``name``: what ``check`` compares with."""
    return _exercise(name).reference


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES_TABLE:
        raise KeyError(f"no exercise called {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return EXERCISES_TABLE[name]


# ---------------------------------------------------------------------------------------------
# Running a case and saying what differs
# ---------------------------------------------------------------------------------------------

def _clone(x):
    return x.detach().clone() if torch.is_tensor(x) else copy.deepcopy(x)


class _Mismatch(Exception):
    """The learner's function returned something of the wrong kind (what, in words)."""


def _call(exercise, fn, case):
    """fn on fresh copies of the inputs: (names, outputs, inputs); a loss's gradients included."""
    if exercise.trial is not None:
        return exercise.trial(fn, case) + (case.args,)
    args = [_clone(a) for a in case.args]
    for i in exercise.grads:
        args[i].requires_grad_(True)
    out = fn(*args)
    n = len(exercise.outputs) - len(exercise.grads)
    if exercise.compare is not None or n == 1:
        if n == 1 and isinstance(out, (tuple, list)) and exercise.compare is None:
            raise _Mismatch(f"expected the {exercise.outputs[0]} alone, got {_describe(out)}")
        outs = (out,)
    elif not isinstance(out, (tuple, list)) or len(out) != n:
        raise _Mismatch(f"expected {n} outputs ({', '.join(exercise.outputs)}), "
                        f"got {_describe(out)}")
    else:
        outs = tuple(out)
    if exercise.grads:
        loss = outs[0]
        ok = torch.is_tensor(loss) and loss.requires_grad and loss.dim() == 0
        grads = torch.autograd.grad(loss, [args[i] for i in exercise.grads], allow_unused=True) \
            if ok else [None] * len(exercise.grads)
        outs = outs + tuple(torch.zeros_like(args[i]) if ok and grad is None else grad
                            for i, grad in zip(exercise.grads, grads))
    return exercise.outputs, outs, args


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"{type(x).__name__} {x!r}"[:80]


def _show(x: torch.Tensor, where) -> str:
    """x rounded, or the part of it around ``where`` (the largest difference) if x is large."""
    rounded = lambda values: [round(v, 4) for v in values.tolist()]  # noqa: E731
    if x.dim() == 0:
        return f"{x.item():.6g}"
    if x.numel() <= 12:
        return str(rounded(x) if x.dim() < 2 else [rounded(row) for row in x])
    if x.dim() == 1:
        start = max(0, min(where[0] - 5, x.numel() - 12))
        return f"[{start}:{start + 12}] {rounded(x[start:start + 12])}"
    return f"row {where[0]}: {rounded(x[where[0]])}"


def _compare_tensors(names, expected, got):
    """(what differs between two tuples of outputs in words, or None; the max abs difference)."""
    largest = 0.0
    for name, e, g in zip(names, expected, got):
        if g is None:
            return (f"{name}: no gradient reaches it from your loss (training calls "
                    "loss.backward()): compute the loss from the inputs with torch, no .item(), "
                    ".detach() or Python floats"), 0
        try:
            g = torch.as_tensor(g, dtype=e.dtype).detach()
        except (TypeError, ValueError, RuntimeError):
            return f"{name}: expected a tensor of shape {tuple(e.shape)}, got {_describe(g)}", 0
        if g.shape != e.shape:
            return f"{name}: expected shape {tuple(e.shape)}, got shape {tuple(g.shape)}", 0
        diff = (g - e).abs().nan_to_num(float("inf"))
        if not torch.allclose(g, e, **TOLERANCE):
            index = int(diff.argmax())
            where = divmod(index, e.shape[-1]) if e.dim() == 2 else (index,)
            at = f" at {list(where)}" if e.numel() > 1 else ""
            return (f"{name}: max abs difference {diff.max().item():.4g}{at}\n"
                    f"    expected {_show(e, where)}\n         got {_show(g, where)}"), 0
        largest = max(largest, diff.max().item() if diff.numel() else 0.0)
    return None, largest


def _where_raised(error, fn) -> str:
    code = getattr(fn, "__code__", None)
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if code is not None and f.filename == code.co_filename]
    if not frames or not frames[-1].line:
        return ""
    return f" at `{frames[-1].line}` (line {frames[-1].lineno})"


def _verdict(name: str, fn) -> tuple[bool, bool, str]:
    """(right, not written yet, the verdict in words)."""
    exercise = _exercise(name)
    if not callable(fn):
        return False, False, f"{name}: expected a function, got {_describe(fn)}"
    cases = exercise.cases()
    failures, largest = [], 0.0
    for case in cases:
        names, expected, _ = _call(exercise, exercise.reference, case)
        try:
            _, got, inputs = _call(exercise, fn, case)
        except NotImplementedError:
            return False, True, (f"{name}: not written yet; the lesson uses the package's version "
                                 f"({exercise.where}).")
        except _Mismatch as mismatch:
            failures.append((case, str(mismatch)))
            continue
        except Exception as error:  # the learner's bug: reported, never raised
            failures.append((case, f"your function raised {type(error).__name__}: {error}"
                                   f"{_where_raised(error, fn)}"))
            continue
        if any(torch.is_tensor(a) and not torch.equal(a.detach(), b)
               for a, b in zip(inputs, case.args)):
            failures.append((case, "your function changed one of its inputs in place; the trainer "
                                   "uses them afterwards: work on a copy (x = x.clone())"))
            continue
        if exercise.compare is not None:
            problem, difference = exercise.compare(expected[0], got[0], case), 0.0
        else:
            problem, difference = _compare_tensors(names, expected, got)
        largest = max(largest, difference)
        if problem is not None:
            failures.append((case, problem))
    if not failures:
        return True, False, (f"{name}: right. It matches {exercise.where} on all {len(cases)} "
                             f"cases (max abs difference {largest:.1e}).")
    if len(failures) < len(cases):    # some cases pass: the first edge case that fails says most
        failures.sort(key=lambda failure: failure[0].general)
    (case, problem), others = failures[0], [c.name for c, _ in failures[1:]]
    return False, False, (f"{name}: not right yet, {len(failures)} of {len(cases)} cases differ. "
                          f"On \"{case.name}\":\n  {problem}\n  hint: {case.hint}"
                          + (f"\n  also differ: {', '.join(others)}" if others else ""))


def check(name: str, fn) -> bool:
    """Run ``fn`` against the package's version of exercise ``name`` on random inputs and the
    edge cases that matter; print the verdict (what differs, on which case, by how much, or that
    it is right). Returns True if ``fn`` is right; a stub raising NotImplementedError is False."""
    right, _, text = _verdict(name, fn)
    print(text)
    return right


def use(name: str, fn) -> Callable:
    """The function a lesson trains with: ``fn`` if ``check(name, fn)`` passes, else the
    package's version (the note says so), so "Run All" works with every stub unwritten."""
    right, stub, text = _verdict(name, fn)
    print(text)
    if right:
        print("The lesson uses yours from here on.")
        return fn
    if not stub:
        print(f"The lesson goes on with the package's version ({_exercise(name).where}) "
              "until yours passes.")
    return reference(name)
