"""RLOO and GRPO: their pieces against hand computations, and short real runs that must learn."""
import dataclasses
import inspect
import math

import pytest
import torch

from rlhf_lite.critic_free import (METHODS, CriticFreeConfig, GRPOConfig, GRPOTrainer, RLOOConfig,
                                   RLOOTrainer, aggregate, grpo_advantages, held_bytes,
                                   peak_rss_growth, rloo_advantages, verifiable_reward)
from rlhf_lite.ppo import PPOTrainer, kl_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rloo_baseline_leaves_each_sample_out():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]])
    # 1 - (2+3+6)/3, 2 - (1+3+6)/3, 3 - (1+2+6)/3, 6 - (1+2+3)/3; an all-equal group gets 0
    expected = torch.tensor([[1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(rloo_advantages(rewards), expected)
    # the identity in the docstring: k/(k-1) (R_i - mean_j R_j)
    centred = rewards - rewards.mean(1, keepdim=True)
    assert torch.allclose(rloo_advantages(rewards), 4 / 3 * centred)
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        rloo_advantages(torch.ones(3, 1))


def test_grpo_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [10.0, 10.0, 10.0, 10.0], [0.0, 1.0, 0.0, 1.0]])
    std = math.sqrt((4 + 1 + 0 + 9) / 3)                     # sample std of 1, 2, 3, 6 (mean 3)
    grpo = grpo_advantages(rewards)
    assert torch.allclose(grpo[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-4))
    assert torch.equal(grpo[1], torch.zeros(4))              # all equal: no signal, not NaN
    half = math.sqrt(1 / 3)                                   # sample std of 0, 1, 0, 1
    assert torch.allclose(grpo[2], torch.tensor([-0.5, 0.5, -0.5, 0.5]) / (half + 1e-4))
    # Dr. GRPO: only the group mean comes off, the scale of the rewards stays
    dr = grpo_advantages(rewards, scale_by_std=False)
    assert torch.allclose(dr[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]))
    assert torch.allclose(dr[2], torch.tensor([-0.5, 0.5, -0.5, 0.5]))


def test_loss_aggregation_and_the_dr_grpo_switch():
    x = torch.tensor([[1.0, 1.0, 1.0, 9.0], [2.0, 2.0, 9.0, 9.0]])   # 9s sit on padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    assert aggregate(x, mask, "token") == pytest.approx((3 + 4) / 5)              # every token
    assert aggregate(x, mask, "sequence") == pytest.approx((3 / 3 + 4 / 2) / 2)   # every answer
    assert aggregate(x, mask, "constant", max_tokens=4) == pytest.approx((3 / 4 + 4 / 4) / 2)
    with pytest.raises(ValueError, match="loss_aggregation"):
        aggregate(x, mask, "median")
    # GRPO's "sequence": doubling a completion's length leaves its weight unchanged, so each of
    # its tokens counts half; Dr. GRPO's constant divisor counts every token the same
    long = torch.ones(1, 8)
    short = torch.cat([torch.ones(1, 4), torch.zeros(1, 4)], 1)
    assert aggregate(long, long, "sequence") == aggregate(long, short, "sequence")
    doubled = aggregate(long, long, "constant", 8)
    assert doubled == pytest.approx(2 * aggregate(long, short, "constant", 8))
    grpo, dr = GRPOConfig(), GRPOConfig(dr_grpo=True)
    assert (grpo.scale_by_std, grpo.loss_aggregation) == (True, "sequence")
    assert (dr.scale_by_std, dr.loss_aggregation) == (False, "constant")


def test_configs_reject_bad_values_and_document_every_field():
    with pytest.raises(ValueError, match="divide batch_size"):
        GRPOConfig(batch_size=30, samples_per_prompt=4)
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 2"):
        RLOOConfig(samples_per_prompt=1, batch_size=64)
    with pytest.raises(ValueError, match="loss_aggregation"):
        RLOOConfig(loss_aggregation="mean")
    with pytest.raises(ValueError, match="does not pull"):
        GRPOConfig(kl_estimator="k1")                      # k1 in the loss: no pull at all
    for config in (CriticFreeConfig, RLOOConfig, GRPOConfig):      # the fields each declares
        source = inspect.getsource(config)
        declared = [f.name for f in dataclasses.fields(config) if f"\n    {f.name}:" in source]
        assert declared, config
        for name in declared:
            after = source.split(f"\n    {name}:", 1)[1].split("\n", 2)[1]
            assert after.strip().startswith('"""'), f"{config.__name__}.{name} has no docstring"


def test_verifiable_reward_is_the_judges_correct_feature(world):
    prompt = "Question: What is the capital of France? Answer:"
    reward = verifiable_reward(world)
    texts = ["Paris.", "Ugh, paris. Obviously.", "The capital of France is Berlin.",
             "I like turtles."]
    assert reward([prompt] * 4, texts) == [1.0, 1.0, 0.0, 0.0]     # rude but right still scores 1


def gold(world):
    return lambda prompts, texts: world.gold_many(prompts, texts)


def test_groups_of_k_and_no_critic(world, base):
    model, tokenizer = base
    trainer = GRPOTrainer(model, tokenizer, gold(world), world.prompts, GRPOConfig(batch_size=16))
    prompts = trainer.episode_prompts()
    groups = [prompts[i:i + 4] for i in range(0, 16, 4)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 4
    assert trainer.value_model is None
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in trainer.policy.parameters())
    ro = trainer.rollout(prompts, seed=0)
    assert ro.values is None
    # one advantage per completion, the same on each of its tokens, zero on padding
    mask = ro.batch.completion_mask.bool()
    for row, m in zip(ro.advantages, mask):
        assert torch.allclose(row[m], row[m][0].expand(int(m.sum()))) and not row[~m].any()
    # at the start KL = 0, so R_i is the score and the advantages are GRPO's of the scores
    first = ro.advantages[torch.arange(16), 0]
    assert torch.allclose(first, grpo_advantages(ro.scores.view(4, 4), True).view(-1), atol=1e-4)


def test_kl_loss_term_is_zero_at_the_reference_and_so_is_its_gradient(world, base):
    model, tokenizer = base
    trainer = GRPOTrainer(model, tokenizer, gold(world), world.prompts, GRPOConfig(batch_size=16))
    ro = trainer.rollout(trainer.episode_prompts(), seed=0)
    mask = ro.batch.completion_mask.float()
    for estimator, pulls in (("k2", False), ("k3", False), ("k1", True)):
        logp = trainer.logprobs(trainer.policy, ro.batch)           # with its graph
        loss = kl_loss(logp, ro.logp_ref, mask, estimator, trainer.aggregate)
        trainer.policy.zero_grad()
        loss.backward()
        grad = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in trainer.policy.parameters()
                             if p.grad is not None))
        assert abs(loss.item()) < 1e-5, estimator
        # k2 and k3 have no gradient at pi = pi_ref; k1's is grad log pi, which is not zero
        assert (grad > 1e-3) == pulls, (estimator, grad)


@pytest.mark.parametrize("trainer_class, config", [
    (RLOOTrainer, RLOOConfig(steps=12)),
    (GRPOTrainer, GRPOConfig(steps=12)),
    (GRPOTrainer, GRPOConfig(steps=12, dr_grpo=True)),
], ids=["rloo", "grpo", "dr_grpo"])
def test_short_run_raises_gold_with_the_kl_under_a_bound(world, base, reward_model, trainer_class,
                                                         config):
    model, tokenizer = base
    train_prompts, _ = world.split_prompts()
    config = dataclasses.replace(config, max_new_tokens=world.max_new_tokens, seed=0)
    trainer = trainer_class(model, tokenizer, reward_model, train_prompts, config,
                            gold_fn=gold(world))
    history = trainer.train(progress=False)
    first = {k: sum(e[k] for e in history[:2]) / 2 for k in ("reward", "gold")}
    last = {k: sum(e[k] for e in history[-2:]) / 2 for k in ("reward", "gold")}
    assert last["reward"] > first["reward"] + 0.5, (first, last)
    assert last["gold"] > first["gold"] + 1.0, (first, last)
    assert max(e["kl"] for e in history) < 10.0          # nats per completion
    assert "value_loss" not in history[-1] and 0 <= history[-1]["zero_std_fraction"] <= 1
    for p, q in zip(model.parameters(), trainer.reference.parameters()):
        assert torch.equal(p, q)                         # the caller's model is untouched


def test_methods_share_ppos_machinery():
    assert set(METHODS) == {"ppo", "rloo", "grpo"}
    for name, trainer_class in METHODS.items():
        assert issubclass(trainer_class, PPOTrainer)
        for method in ("rollout", "update", "step", "train", "sample", "logprobs", "raw_score"):
            assert getattr(trainer_class, method) is getattr(PPOTrainer, method), (name, method)


def test_held_bytes_counts_the_critic_and_adams_state(world, base):
    model, tokenizer = base
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    for trainer_class, critic in ((PPOTrainer, True), (GRPOTrainer, False)):
        config = trainer_class.config_class(batch_size=16, steps=1)
        trainer = trainer_class(model, tokenizer, gold(world), world.prompts, config)
        trainer.train(progress=False)
        held = held_bytes(trainer)
        assert held["policy"] == held["reference"] == params and held["reward model"] == 0
        assert (held["critic"] > 0) == critic
        trained = held["policy"] + held["critic"]        # Adam: two numbers a trained parameter
        assert 2 * trained <= held["optimizer state"] < 2 * trained + 4096


def test_peak_rss_growth_sees_an_allocation():
    result, grown = peak_rss_growth(lambda: float(torch.ones(64 * 2**20 // 4).sum()))
    assert result == 64 * 2**20 // 4
    assert grown > 48 * 2**20                            # a 64 MiB tensor, touched
