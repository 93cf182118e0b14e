"""Scale: every preset's settings learn, bf16 only where it pays, every module on the device."""
import copy

import pytest
import torch

from rlhf_lite.beyond import best_of_n_curve, sample_candidates
from rlhf_lite.dpo import DPOConfig, SFTConfig, train_dpo, train_sft
from rlhf_lite.models import (PRESETS, autocast, build_tokenizer, completion_logprobs, generate,
                              make_base_model, preset_for, pretrain)
from rlhf_lite.ppo import PPOConfig, PPOTrainer, ValueModel, gold_win_rate
from rlhf_lite.preferences import Comparison, make_preference_dataset
from rlhf_lite.reward_model import (RewardModel, _pair_forward, bradley_terry_loss, encode_pairs,
                                    evaluate, train_reward_model)
from rlhf_lite.world import SimulatedLabeler

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def test_presets_hold_every_training_setting_and_fall_with_width(world):
    widths = [PRESETS[name].n_embd for name in ("tiny", "small", "gpu")]
    assert widths == sorted(widths)
    for rate in ("pretrain_lr", "reward_model_lr", "reward_model_gate_lr", "rl_lr"):
        rates = [getattr(PRESETS[name], rate) for name in ("tiny", "small", "gpu")]
        assert rates == sorted(rates, reverse=True) and len(set(rates)) == 3, rate
    assert PRESETS["tiny"].pretrain_lr == 1e-2 and PRESETS["gpu"].pretrain_lr < 1e-2 / 3
    # a model of your own gets the settings of the preset nearest its width
    assert preset_for(make_base_model(build_tokenizer(world), "small")) == "small"


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_presets_settings_make_the_losses_fall(world, name):
    """A few steps with each preset's learning rates and warm-up (the gpu model on this CPU
    too: a small batch): the pretraining loss falls, and so does the reward model's on a
    fixed batch of pairs."""
    settings = PRESETS[name]
    tokenizer = build_tokenizer(world)
    model = make_base_model(tokenizer, name, seed=0)
    losses = pretrain(model, tokenizer, world, steps=8, batch_size=8, lr=settings.pretrain_lr,
                      corpus_size=200, warmup=settings.warmup, seed=0, device="cpu")
    assert sum(losses[-2:]) / 2 < losses[0] - 0.5, losses
    # the reward model: its learning rates (the gate's apart) on four fixed pairs, eight steps
    rows = world.corpus(8, seed=3)
    pairs = [Comparison(p, a, b) for (p, a, _), (_, b, _) in zip(rows[::2], rows[1::2])]
    reward_model = RewardModel.from_base(model, tokenizer).train()
    gate = list(reward_model.log_prob_gate.gate.parameters())
    rest = [p for p in reward_model.parameters() if all(p is not q for q in gate)]
    optimizer = torch.optim.AdamW([dict(params=rest, lr=settings.reward_model_lr),
                                   dict(params=gate, lr=settings.reward_model_gate_lr)])
    ids, mask, answer, tie, both_bad = encode_pairs(tokenizer, pairs, "cpu")
    rows = torch.arange(len(pairs))
    bt_losses = []
    for _ in range(8):
        r_chosen, r_rejected = _pair_forward(reward_model, (ids, mask, answer), rows)
        loss = bradley_terry_loss(r_chosen, r_rejected, tie, both_bad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bt_losses.append(loss.item())
    assert min(bt_losses[-2:]) < bt_losses[0] - 0.01, bt_losses


def test_autocast_is_bf16_on_a_gpu_and_nothing_on_the_cpu():
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        with autocast("cuda"):
            x = torch.ones(2, 2, device="cuda")
            assert (x @ x).dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_every_stage_runs_on_the_device_with_fp32_logprobs_and_losses(world, base, device,
                                                                      tmp_path):
    """Each module's tensors on ``device`` (the CUDA run is the device audit); under autocast
    (bf16 on a GPU) the log-probs, rewards and values that losses and the KL use are fp32."""
    model, tokenizer = base
    model = copy.deepcopy(model).to(device)
    here = torch.device(device).type
    # models: generation and log-probs
    batch = generate(model, tokenizer, world.prompts[:8], world.max_new_tokens, seed=0)
    tensors = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.logprobs)
    assert {t.device.type for t in tensors} == {here}
    with autocast(device):
        logp = completion_logprobs(model, batch)
    assert logp.device.type == here and logp.dtype == torch.float32
    # reward model: training (its tqdm bar and normalisation included), scoring, evaluation
    labeler = SimulatedLabeler(world, "helpful", seed=0)
    comparisons = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=40, seed=0)
    reward_model, _ = train_reward_model(model, tokenizer, comparisons, epochs=1, device=device,
                                         max_new_tokens=world.max_new_tokens)
    assert reward_model.device.type == here
    with autocast(device):
        scores = reward_model.score_completions(batch)
    assert scores.device.type == here and scores.dtype == torch.float32
    # its log-prob gate (and LM head) too, and saved and loaded with the rest
    assert {p.device.type for p in reward_model.log_prob_gate.parameters()} == {here}
    reward_model.save(tmp_path / "reward_model")
    loaded = RewardModel.load(tmp_path / "reward_model", device)
    assert {p.device.type for p in loaded.log_prob_gate.parameters()} == {here}
    with autocast(device):
        assert torch.allclose(loaded.score_completions(batch), scores, atol=1e-4)
    assert 0 <= evaluate(reward_model, comparisons[:10], world, labeler)["accuracy"] <= 1
    # PPO: value models, one iteration, the win rate
    values = ValueModel.from_reward_model(reward_model)(batch)
    assert values.device.type == here and values.dtype == torch.float32
    assert ValueModel.from_policy(model)(batch).device.type == here
    config = PPOConfig(steps=1, batch_size=8, minibatch_size=4, ppo_epochs=1,
                       max_new_tokens=world.max_new_tokens)
    trainer = PPOTrainer(model, tokenizer, reward_model, world.prompts, config)
    entry = trainer.step()
    assert all(torch.isfinite(torch.tensor(entry[k])) for k in ("policy_loss", "value_loss", "kl"))
    assert next(trainer.value_model.parameters()).device.type == here
    gold = lambda prompts, texts: world.gold_many(prompts, texts)  # noqa: E731
    assert 0 <= gold_win_rate(trainer.policy, model, tokenizer, world.prompts[:4], gold, 2) <= 1
    # DPO, SFT, best-of-n
    for train, config in ((train_dpo, DPOConfig), (train_sft, SFTConfig)):
        policy, history = train(model, tokenizer, comparisons, config(epochs=1, device=device))
        assert next(policy.parameters()).device.type == here and torch.isfinite(
            torch.tensor(history[-1]["loss"]))
    candidates = sample_candidates(model, tokenizer, world.prompts[:4], 4, world.max_new_tokens)
    curve = best_of_n_curve(world.prompts[:4], candidates, reward_model, gold, ns=[1, 2])
    assert len(curve["gold"]) == 2
    assert next(model.parameters()).device.type == here      # the caller's model stayed put
