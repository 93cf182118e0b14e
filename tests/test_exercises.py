"""Exercises that count: check says what is wrong with wrong answers and passes right ones, and
a function that passes is the one the trainers call."""
import copy

import pytest
import torch
import torch.nn.functional as F

from rlhf_lite import exercises
from rlhf_lite.beyond import best_of_n
from rlhf_lite.dpo import train_dpo
from rlhf_lite.exercises import EXERCISES, check, reference, use
from rlhf_lite.models import completion_logprobs, generate
from rlhf_lite.ppo import PPOConfig, PPOTrainer, reinforce_step
from rlhf_lite.preferences import make_preference_dataset
from rlhf_lite.reward_model import train_reward_model
from rlhf_lite.world import SimulatedLabeler

pytestmark = pytest.mark.usefixtures("one_thread")


class Spy:
    """Calls ``fn`` and keeps count of the calls and what they returned."""
    def __init__(self, fn):
        self.fn, self.calls, self.returned = fn, 0, []

    def __call__(self, *args):
        self.calls += 1
        self.returned.append(self.fn(*args))
        return self.returned[-1]

    def reset(self):
        self.calls, self.returned = 0, []


def stub(*args):
    raise NotImplementedError


# --- check: right, not written, wrong ----------------------------------------------------------

@pytest.mark.parametrize("name", EXERCISES)
def test_the_reference_passes_and_a_stub_is_not_written_yet(name, capsys):
    assert check(name, reference(name)) is True
    assert f"{name}: right." in capsys.readouterr().out
    assert check(name, stub) is False
    assert capsys.readouterr().out.strip() == (
        f"{name}: not written yet; the lesson uses the package's version "
        f"({exercises.EXERCISES_TABLE[name].where}).")


def bt_sign_flipped(r_chosen, r_rejected, tie, both_bad, margin=0.0):
    return -F.logsigmoid(r_rejected - r_chosen).mean()


def bt_ties_ignored(r_chosen, r_rejected, tie, both_bad, margin=0.0):
    keep = (~both_bad).float()
    return (-F.logsigmoid(r_chosen - r_rejected - margin) * keep).sum() / keep.sum().clamp(min=1)


def bt_both_bad_counted(r_chosen, r_rejected, tie, both_bad, margin=0.0):
    d = r_chosen - r_rejected
    tied = -0.5 * (F.logsigmoid(d) + F.logsigmoid(-d))
    return torch.where(tie, tied, -F.logsigmoid(d - margin)).mean()


def rewards_mask_ignored(scores, kl, mask, kl_coef):
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(rewards)), last] += scores
    return rewards


def rewards_on_the_last_column(scores, kl, mask, kl_coef):
    rewards = -kl_coef * kl * mask
    rewards[:, -1] += scores
    return rewards


def gae_skips_the_last_token(rewards, values, mask, gamma, lam):   # off by one
    values = values * mask
    advantages, running = torch.zeros_like(rewards), 0.0
    for t in reversed(range(rewards.shape[1] - 1)):
        running = rewards[:, t] + gamma * values[:, t + 1] - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def gae_bootstraps_from_padding(rewards, values, mask, gamma, lam):   # V_{T+1} from padding
    advantages, running = torch.zeros_like(rewards), 0.0
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def clip_one_side_only(logp, logp_old, advantages, mask, clip_range=0.2):
    ratio = torch.exp(logp - logp_old)
    objective = torch.min(ratio * advantages, ratio.clamp(max=1 + clip_range) * advantages)
    return -(objective * mask).sum() / mask.sum()


def clip_mean_over_padding(logp, logp_old, advantages, mask, clip_range=0.2):
    ratio = torch.exp(logp - logp_old)
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantages
    return -torch.min(ratio * advantages, clipped).mean()


def clip_sign_flipped(logp, logp_old, advantages, mask, clip_range=0.2):
    return -clip_mean_over_padding(logp, logp_old, advantages, mask, clip_range)


def dpo_beta_outside(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    return -beta * F.logsigmoid((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)).mean()


def best_of_n_from_zero(candidates, scores):
    kept = []
    for row, row_scores in zip(candidates, scores.tolist()):
        best, text = 0.0, row[0]
        for candidate, score in zip(row, row_scores):
            if score > best:
                best, text = score, candidate
        kept.append(text)
    return kept


def reinforce_without_baseline(policy, optimizer, tokenizer, prompts, reward, max_new_tokens=24,
                               seed=None):
    batch = generate(policy, tokenizer, prompts, max_new_tokens, seed=seed)
    rewards = torch.tensor(reward(batch.prompts, batch.texts))
    loss = -(rewards * completion_logprobs(policy, batch).sum(1)).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return rewards


def reinforce_without_zero_grad(policy, optimizer, tokenizer, prompts, reward, max_new_tokens=24,
                                seed=None):
    batch = generate(policy, tokenizer, prompts, max_new_tokens, seed=seed)
    rewards = torch.tensor(reward(batch.prompts, batch.texts))
    loss = -((rewards - rewards.mean()) * completion_logprobs(policy, batch).sum(1)).mean()
    loss.backward()
    optimizer.step()
    return rewards


WRONG = [  # (exercise, wrong function, the case the verdict must name, a phrase it must hold)
    ("bradley_terry_loss", bt_sign_flipped, "random preferences", "loss: max abs difference"),
    ("bradley_terry_loss", bt_ties_ignored, "ties", "loss: max abs difference"),
    ("bradley_terry_loss", bt_both_bad_counted, "both bad", "loss: max abs difference"),
    ("kl_penalised_rewards", rewards_mask_ignored, "kl is not 0 on padding", "multiply"),
    ("kl_penalised_rewards", rewards_on_the_last_column, "episodes of different lengths",
     "last real token"),
    ("gae", gae_skips_the_last_token, "a worked example (gamma 0.9, lam 0.8)",
     "advantages A_t: max abs difference"),
    ("gae", gae_bootstraps_from_padding, "a worked example (gamma 0.9, lam 0.8)",
     "its 3.0 is padding"),
    ("clipped_policy_loss", clip_one_side_only, "A < 0: rho below 1 - eps", "both sides"),
    ("clipped_policy_loss", clip_mean_over_padding, "padding holds large numbers", "real tokens"),
    ("clipped_policy_loss", clip_sign_flipped, "random batch with padding", "max abs difference"),
    ("dpo_loss", dpo_beta_outside, "random pairs, beta 0.5", "loss: max abs difference"),
    ("best_of_n", best_of_n_from_zero, "every score negative", "expected 'answer"),
    ("reinforce_step", reinforce_without_baseline, "one step, answers of different lengths",
     "the change of the policy's parameters: max abs difference"),
    ("reinforce_step", reinforce_without_zero_grad, "two steps in a row", "zero the gradients"),
]


@pytest.mark.parametrize("name, wrong, case, phrase", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_a_wrong_function_fails_and_the_verdict_says_where(name, wrong, case, phrase, capsys):
    assert check(name, wrong) is False
    out = capsys.readouterr().out
    assert out.startswith(f"{name}: not right yet")
    assert f'On "{case}":' in out
    assert phrase in out
    if name != "best_of_n":
        assert "expected" in out and "got" in out


def test_errors_in_place_changes_and_missing_gradients_are_reported_not_raised(capsys):
    def gae_with_a_bug(rewards, values, mask, gamma, lam):
        return rewards[:, 99], values
    assert check("gae", gae_with_a_bug) is False
    out = capsys.readouterr().out
    assert "your function raised IndexError" in out and "`return rewards[:, 99], values`" in out

    def gae_in_place(rewards, values, mask, gamma, lam):
        values *= mask
        return reference("gae")(rewards, values, mask, gamma, lam)
    assert check("gae", gae_in_place) is False
    assert "changed one of its inputs in place" in capsys.readouterr().out

    def bt_as_a_float(r_chosen, r_rejected, tie, both_bad, margin=0.0):
        return reference("bradley_terry_loss")(r_chosen, r_rejected, tie, both_bad, margin).item()
    assert check("bradley_terry_loss", bt_as_a_float) is False
    assert "no gradient reaches it" in capsys.readouterr().out

    def gae_advantages_only(rewards, values, mask, gamma, lam):
        return reference("gae")(rewards, values, mask, gamma, lam)[0]
    assert check("gae", gae_advantages_only) is False
    assert "expected 2 outputs (advantages A_t, returns R_t)" in capsys.readouterr().out


def test_use_gives_yours_when_right_else_the_package_s(capsys):
    mine = Spy(reference("gae"))
    assert use("gae", mine) is mine
    assert "The lesson uses yours from here on." in capsys.readouterr().out
    assert use("gae", gae_skips_the_last_token) is reference("gae")
    assert "goes on with the package's version (rlhf_lite.ppo.gae)" in capsys.readouterr().out
    assert use("gae", stub) is reference("gae")
    with pytest.raises(KeyError, match="gae, clipped_policy_loss"):
        reference("gea")


# --- a function that passes is the one that trains ------------------------------------------

@pytest.fixture(scope="module")
def pairs(world, base):
    model, tokenizer = base
    labeler = SimulatedLabeler(world, "helpful", seed=0)
    return make_preference_dataset(world, model, tokenizer, labeler, n_pairs=64, seed=0)


def test_the_reward_model_trains_with_the_learners_loss(base, pairs):
    model, tokenizer = base
    spy = Spy(reference("bradley_terry_loss"))
    assert use("bradley_terry_loss", spy) is spy
    spy.reset()
    _, history = train_reward_model(model, tokenizer, pairs, heldout=0.0, epochs=1, batch_size=32,
                                    max_new_tokens=8, loss_fn=spy)
    assert spy.calls == 2 == len(history["train_loss"])
    assert history["train_loss"] == [loss.item() for loss in spy.returned]


def test_ppo_trains_with_the_learners_rewards_advantages_and_clipped_loss(world, base):
    model, tokenizer = base
    spies = {name: Spy(reference(name)) for name in ("kl_penalised_rewards", "gae",
                                                     "clipped_policy_loss")}
    for name, spy in spies.items():
        assert use(name, spy) is spy
        spy.reset()
    config = PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=8,
                       normalize_reward=False, length_chunks=1)   # one loss call a minibatch
    trainer = PPOTrainer(model, tokenizer, world.gold_many, world.prompts, config,
                         rewards_fn=spies["kl_penalised_rewards"], advantages_fn=spies["gae"],
                         policy_loss_fn=spies["clipped_policy_loss"])
    rollout = trainer.rollout(world.prompts[:8], seed=0)
    assert rollout.rewards is spies["kl_penalised_rewards"].returned[-1]
    assert spies["gae"].calls == 1 and spies["gae"].fn is reference("gae")
    entry = trainer.step()
    assert spies["clipped_policy_loss"].calls == 4                    # 2 epochs x 2 minibatches
    losses = [loss.item() for loss in spies["clipped_policy_loss"].returned]
    assert entry["policy_loss"] == pytest.approx(sum(losses) / 4)

    # a policy loss that is 0 leaves the policy where it was: the hook's loss is what trains
    frozen = PPOTrainer(model, tokenizer, world.gold_many, world.prompts, config,
                        policy_loss_fn=lambda logp, *rest: 0.0 * logp.sum())
    frozen.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), frozen.policy.parameters()))


def test_dpo_and_best_of_n_use_the_learners_functions(world, base, pairs):
    model, tokenizer = base
    spy = Spy(reference("dpo_loss"))
    assert use("dpo_loss", spy) is spy
    spy.reset()
    _, history = train_dpo(model, tokenizer, pairs[:16], epochs=1, batch_size=8, loss_fn=spy)
    assert spy.calls == 2
    assert [h["loss"] for h in history] == [loss.item() for loss in spy.returned]

    pick = Spy(reference("best_of_n"))
    assert use("best_of_n", pick) is pick
    pick.reset()
    result = best_of_n(model, tokenizer, world.prompts[:6], 4, world.gold_many, seed=0, pick=pick)
    assert pick.calls == 1 and result.texts == pick.returned[0]
    assert torch.equal(result.scores, result.candidate_scores.max(1).values)


def test_reinforce_raises_a_reward_for_short_answers(world, base):
    model, tokenizer = base
    policy = copy.deepcopy(model)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    shorter = lambda prompts, texts: [-float(len(t.split())) for t in texts]  # noqa: E731
    prompts = world.split_prompts()[0]
    rewards = [reinforce_step(policy, optimizer, tokenizer, prompts[:32], shorter, 16, seed=s)
               .mean().item() for s in range(12)]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 1.0, rewards


def test_group_advantages_with_the_population_std_is_caught(capsys):
    """GRPO's std is the sample one (k - 1), as in TRL: the population std is a wrong answer."""
    def population_std(rewards, scale_by_std=True, eps=1e-4):
        centred = rewards - rewards.mean(1, keepdim=True)
        if not scale_by_std:
            return centred
        return centred / (rewards.std(1, keepdim=True, unbiased=False) + eps)
    assert check("group_advantages", reference("group_advantages"))
    assert not check("group_advantages", population_std)
    assert "groups of two" in capsys.readouterr().out
