"""Stage 2: the Bradley-Terry loss, the reward model's reading position, training, evaluation."""
import math
import random

import pytest
import torch

from conftest import tiny_llama
from rlhf_lite.models import encode_completions, generate
from rlhf_lite.preferences import Comparison, make_preference_dataset
from rlhf_lite.models import position_ids
from rlhf_lite.reward_model import (RewardModel, bradley_terry_loss, calibration,
                                    completion_columns, evaluate, noise_ceiling, pair_rewards,
                                    rewards_by_style, shortfall_by_style, split_comparisons,
                                    train_reward_model)
from rlhf_lite.world import SimulatedLabeler


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the loss --------------------------------------------------------------------------------

def test_loss_equals_hand_computation():
    r_chosen, r_rejected = torch.tensor([2.0, -0.5, 0.3]), torch.tensor([0.5, 0.5, 0.3])
    sig = lambda z: 1 / (1 + math.exp(-z))
    by_hand = -(math.log(sig(1.5)) + math.log(sig(-1.0)) + math.log(sig(0.0))) / 3
    assert bradley_terry_loss(r_chosen, r_rejected).item() == pytest.approx(by_hand, rel=1e-6)
    # margin: -log sigmoid(d - m)
    with_margin = -(math.log(sig(1.5 - 1)) + math.log(sig(-1.0 - 1)) + math.log(sig(-1))) / 3
    assert (bradley_terry_loss(r_chosen, r_rejected, margin=1.0).item()
            == pytest.approx(with_margin, rel=1e-6))
    # a tie is the cross-entropy against 1/2; a both-bad pair is left out of the mean
    tie_term = -0.5 * (math.log(sig(-1.0)) + math.log(sig(1.0)))
    loss = bradley_terry_loss(r_chosen, r_rejected, tie=[False, True, False],
                              both_bad=[False, False, True])
    assert loss.item() == pytest.approx((-math.log(sig(1.5)) + tie_term) / 2, rel=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    r_chosen = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    r_rejected = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    bradley_terry_loss(r_chosen, r_rejected).backward()
    # descent: chosen up, rejected down
    assert (r_chosen.grad < 0).all() and (r_rejected.grad > 0).all()
    assert torch.allclose(r_chosen.grad, -r_rejected.grad)
    # the push fades once the gap is large: the third pair is already well separated
    assert r_chosen.grad[2].abs() < r_chosen.grad[0].abs() < r_chosen.grad[1].abs()


def test_tie_pulls_together_and_both_bad_does_nothing():
    r_chosen = torch.tensor([1.0, -1.0, 3.0], requires_grad=True)
    r_rejected = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    bradley_terry_loss(r_chosen, r_rejected, tie=torch.tensor([True, True, False]),
                       both_bad=torch.tensor([False, False, True])).backward()
    assert r_chosen.grad[0] > 0 and r_chosen.grad[1] < 0        # towards the other reward
    assert r_rejected.grad[0] < 0 and r_rejected.grad[1] > 0
    assert r_chosen.grad[2] == 0 and r_rejected.grad[2] == 0    # both bad: no gradient
    everything_bad = bradley_terry_loss(r_chosen, r_rejected, both_bad=[True, True, True])
    assert everything_bad.item() == 0 and everything_bad.requires_grad


# --- the model: read at the last real token, plus the LM's log-probs through a gate ----------

@pytest.fixture(scope="module")
def fresh_reward_model(base):
    model, tokenizer = base
    reward_model = RewardModel.from_base(model, tokenizer)
    torch.nn.init.normal_(reward_model.model.score.weight)  # a head that reacts to every feature
    torch.nn.init.normal_(reward_model.log_prob_gate.gate.weight, std=0.1)   # and a gate that is on
    return reward_model


def token_surprise(model, batch):
    """a_t = log pi(y_t | x, y_<t) - max_v log pi(v | x, y_<t) of the completion's tokens, by
    hand from a causal LM's logits: (B, C), 0 on padding."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=position_ids(batch.attention_mask)).logits
    logp = logits[:, batch.prompt_ids.shape[1] - 1:-1].log_softmax(-1)
    a = logp.gather(-1, batch.completion_ids[..., None]).squeeze(-1) - logp.max(-1).values
    return a * batch.completion_mask


def test_token_term_is_the_base_models_surprise_weighted_by_the_gate(base, world):
    """At initialisation pi is the base model: with the head off and the gate a constant
    softplus(c), r(x, y) = softplus(c) * sum_t a_t, with a_t by hand from the base model's logits.
    Whatever the gate, the term is a penalty (<= 0): more tokens can never earn reward."""
    model, tokenizer = base
    rm = RewardModel.from_base(model, tokenizer)
    assert rm.log_prob_gate.lm_head.weight is rm.model.get_input_embeddings().weight   # tied
    prompts = world.prompts[:3]
    texts = ["Paris.", "I do not know.", "Ugh, whatever."]
    batch = encode_completions(tokenizer, prompts, texts, rm.device)
    surprise = token_surprise(model, batch).sum(1)
    assert (surprise < 0).all()
    with torch.no_grad():
        torch.nn.init.zeros_(rm.model.score.weight)
        torch.nn.init.zeros_(rm.model.score.bias) if rm.model.score.bias is not None else None
        for c in (0.0, 2.0):
            rm.log_prob_gate.gate.bias.fill_(c)
            r = rm(batch.input_ids, batch.attention_mask, completion_columns(batch))
            assert torch.allclose(r, math.log1p(math.exp(c)) * surprise, atol=1e-4)
        torch.nn.init.normal_(rm.log_prob_gate.gate.weight, std=3.0)   # a gate of any sign inside
        assert (rm(batch.input_ids, batch.attention_mask, completion_columns(batch)) <= 0).all()


def test_the_base_model_prefers_the_right_fact_on_every_heldout_fact(base, world):
    """What the token term reads: on every held-out prompt the base model finds the right answer
    less surprising (sum of a_t) than each wrong one written the same way ("Cairo." against
    "Madrid.", a sentence against a sentence), though no reward-model training pair asks it."""
    model, tokenizer = base
    rng = random.Random(0)
    prompts = world.split_prompts()[1]
    assert len(prompts) >= 20
    for p in prompts:
        wrong = sorted({world.task.answer(p, "wrong", rng) for _ in range(40)})
        right = [world.task.answer(p, "terse" if len(w.split()) == 1 else "sentence", rng)
                 for w in wrong]
        batch = encode_completions(tokenizer, [p] * 2 * len(wrong), right + wrong,
                                   next(model.parameters()).device)
        surprise = token_surprise(model, batch).sum(1)
        assert (surprise[:len(wrong)] > surprise[len(wrong):]).all(), p


def test_score_ignores_padding(fresh_reward_model, world):
    """The same prompt + completion scores the same alone and next to a much longer row, and
    whatever ids sit in the padded positions: we read at the last real token (the <eos>)."""
    rm = fresh_reward_model
    short, long = world.prompts[0], max(world.prompts, key=len)
    alone = rm.score([short], ["Paris."], normalize=False)
    together = rm.score([short, long], ["Paris.", "Well, let me think. " * 4 + "The sky is blue."],
                        normalize=False)
    assert torch.allclose(alone, together[:1], atol=1e-5)
    batch = encode_completions(rm.tokenizer, [short, long],
                               ["Paris.", "Whatever. Yes yes yes yes."], rm.device)
    garbage = batch.input_ids.masked_fill(batch.attention_mask == 0, rm.tokenizer.eos_token_id)
    assert torch.allclose(rm(batch.input_ids, batch.attention_mask),
                          rm(garbage, batch.attention_mask), atol=1e-5)


def test_score_reads_the_eos_and_the_prompt(fresh_reward_model, world):
    rm = fresh_reward_model
    p = world.prompts[0]
    batch = encode_completions(rm.tokenizer, [p], ["Paris."], rm.device)
    assert batch.input_ids[0, -1] == rm.tokenizer.eos_token_id
    without_eos = rm(batch.input_ids[:, :-1], batch.attention_mask[:, :-1])
    assert not torch.allclose(rm(batch.input_ids, batch.attention_mask), without_eos)
    other_prompt = next(q for q in world.prompts if q != p)
    assert not torch.allclose(rm.score([p], ["Paris."]), rm.score([other_prompt], ["Paris."]))


def test_any_causal_lm_and_a_pad_that_is_eos(world, tmp_path):
    """Bring your own model: a Llama whose tokenizer pads with <eos> (as ``load_model`` sets up
    tokenizers without a pad). The HF classifier would read at the last token that is not the pad,
    i.e. skip the <eos>; we read at the last real token from the attention mask."""
    from rlhf_lite.models import build_tokenizer
    tokenizer = build_tokenizer(world)
    tokenizer.pad_token = tokenizer.eos_token
    llama = tiny_llama(tokenizer, layers=2, heads=4)
    rm = RewardModel.from_base(llama, tokenizer)
    torch.nn.init.normal_(rm.model.score.weight)
    prompts = [world.prompts[0], max(world.prompts, key=len)]
    texts = ["Paris.", "Well, let me think. " * 3]
    together = rm.score(prompts, texts, normalize=False)
    assert torch.allclose(together[:1], rm.score(prompts[:1], texts[:1], normalize=False),
                          atol=1e-5)
    batch = encode_completions(tokenizer, prompts[:1], texts[:1], rm.device)
    with torch.no_grad():
        hidden = rm.model.base_model(input_ids=batch.input_ids).last_hidden_state
        at_eos, before_eos = rm.model.score(hidden[0, -1]), rm.model.score(hidden[0, -2])
    # the head at the <eos>, plus the token term with the gate at its start, softplus(-3)
    term = math.log1p(math.exp(-3.0)) * token_surprise(llama, batch).sum(1)
    assert torch.allclose(together[0], at_eos + term, atol=1e-5)
    assert not torch.allclose(together[0], before_eos + term)
    # its LM head is not tied to the embeddings: the reward model keeps a copy, and saves it
    assert rm.log_prob_gate.lm_head.weight is not rm.model.get_input_embeddings().weight
    torch.nn.init.normal_(rm.log_prob_gate.gate.weight, std=0.1)
    rm.save(tmp_path / "llama_rm")
    loaded = RewardModel.load(tmp_path / "llama_rm")
    reloaded = loaded.score(prompts, texts, normalize=False)
    assert torch.allclose(reloaded, rm.score(prompts, texts, normalize=False), atol=1e-5)
    assert not torch.allclose(reloaded, together)                  # the gate counts now


def test_score_completions_matches_score_on_samples(fresh_reward_model, base, world):
    """PPO scores its own samples without re-tokenising; that must agree with scoring the texts."""
    model, tokenizer = base
    samples = generate(model, tokenizer, world.prompts[:16], world.max_new_tokens, seed=0)
    ended = samples.ended.cpu()
    assert ended.any()
    from_batch = fresh_reward_model.score_completions(samples).cpu()
    from_texts = fresh_reward_model.score(samples.prompts, samples.texts)
    assert from_batch.shape == (16,)
    assert torch.allclose(from_batch[ended], from_texts[ended], atol=1e-4)


def test_bad_input_says_what_to_do(fresh_reward_model, tmp_path):
    with pytest.raises(ValueError, match="one prompt per completion"):
        fresh_reward_model.score(["a", "b"], ["c"])
    with pytest.raises(FileNotFoundError, match="RewardModel.save"):
        RewardModel.load(tmp_path)
    with pytest.raises(ValueError, match="heldout"):
        split_comparisons([], heldout=1.5)


# --- training and evaluation on simulated labels ----------------------------------------------

@pytest.fixture(scope="module")
def labeler(world):
    return SimulatedLabeler(world, "helpful", temperature=1.0, seed=0)


@pytest.fixture(scope="module")
def trained(base, world):
    """The measurement of benchmarks/bench_reward_model.py: a reward model trained with the
    defaults on 1,000 simulated pairs from training prompts, and 2,000 fresh pairs from held-out
    facts labelled by the same labeler (the standard error of an accuracy near 0.83 is then
    about 0.8 points)."""
    model, tokenizer = base
    labeler = SimulatedLabeler(world, "helpful", temperature=1.0, seed=0)
    train = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=1000, seed=0)
    heldout = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=2000,
                                      prompts=world.split_prompts()[1], seed=1)
    reward_model, history = train_reward_model(model, tokenizer, train, seed=0,
                                               max_new_tokens=world.max_new_tokens,
                                               read_log_probs=True)
    return reward_model, history, heldout


def test_training_history_and_normalisation(trained, base, world):
    reward_model, history, _ = trained
    assert history["n_train"] == 900 and history["n_heldout"] == 100
    assert len(history["train_loss"]) == len(history["step"])
    assert len(history["heldout_accuracy"]) == len(history["epoch"])
    first, last = history["train_loss"][:5], history["train_loss"][-5:]
    assert sum(last) < sum(first)
    # rewards of fresh base-model samples: mean ~0, std ~1
    model, tokenizer = base
    samples = generate(model, tokenizer, world.split_prompts()[0][:128] * 2, world.max_new_tokens,
                       seed=123)
    rewards = reward_model.score_completions(samples)
    assert abs(rewards.mean().item()) < 0.25 and 0.75 < rewards.std().item() < 1.25


def test_without_the_token_term_it_is_the_last_token_reward_model(trained, base, world):
    model, tokenizer = base
    _, _, pairs = trained
    plain, history = train_reward_model(model, tokenizer, pairs[:64], heldout=0.0, epochs=1,
                                        read_log_probs=False, max_new_tokens=world.max_new_tokens)
    assert plain.log_prob_gate is None and len(history["train_loss"]) == 2
    batch = encode_completions(tokenizer, [world.prompts[0]], ["Paris."], plain.device)
    with torch.no_grad():
        hidden = plain.model.base_model(input_ids=batch.input_ids).last_hidden_state
        r = plain(batch.input_ids, batch.attention_mask, completion_columns(batch))
        assert torch.allclose(r, plain.model.score(hidden[:, -1]).squeeze(-1), atol=1e-5)


@pytest.fixture(scope="module")
def result(trained, world, labeler):
    reward_model, _, heldout = trained
    return evaluate(reward_model, heldout, world, labeler)


def test_heldout_accuracy_against_labels_gold_and_ceiling(trained, result, labeler):
    _, _, heldout = trained
    ceiling = noise_ceiling(labeler, heldout)
    assert result["noise_ceiling_accuracy"] == ceiling and 0.8 < ceiling < 0.95
    # far above chance, agrees with gold more than with the noisy labels, never above the ceiling
    assert result["accuracy"] > 0.65
    assert result["gold_agreement"] > result["accuracy"]
    assert result["accuracy"] < ceiling + 0.03


def test_within_five_points_of_the_noise_ceiling_on_heldout_facts(trained, result, world):
    """Issue 10's target: on >= 1,000 fresh pairs whose prompts ask facts no training pair asks,
    accuracy >= ceiling - 0.05. The last-token reward model alone scored ceiling - 0.15 here."""
    reward_model, _, heldout = trained
    train_facts = {world.fact(p) for p in world.split_prompts()[0]}
    assert not {world.fact(c.prompt) for c in heldout} & train_facts
    assert result["n_pairs"] >= 1000
    assert result["accuracy"] >= result["noise_ceiling_accuracy"] - 0.05, result


def test_shortfall_by_style_splits_the_gap(trained, result, world, labeler):
    reward_model, _, heldout = trained
    rows = shortfall_by_style(world, labeler, heldout, *pair_rewards(reward_model, heldout))
    gap = 100 * (result["noise_ceiling_accuracy"] - result["accuracy"])
    # abs=1e-4: evaluate averages in float32
    assert sum(r["points"] for r in rows) == pytest.approx(gap, abs=1e-4)
    assert sum(r["pairs"] for r in rows) == sum(not (c.tie or c.both_bad) for c in heldout)
    assert [r["points"] for r in rows] == sorted((r["points"] for r in rows), reverse=True)
    # by hand: a pair the model gets right and one it gets wrong, both of certain outcome
    p = "Question: What is the capital of France? Answer:"
    pairs = [Comparison(p, "The capital of France is Paris.", "Ugh, paris. Obviously."),
             Comparison(p, "The capital of France is Paris.", "I do not know.")]
    careful = SimulatedLabeler(world, "helpful", temperature=0.01)
    rows = shortfall_by_style(world, careful, pairs, torch.tensor([1.0, 0.0]),
                              torch.tensor([0.0, 1.0]))
    by = {r["styles"]: r for r in rows}
    rude, evasive = by[("rude", "sentence")], by[("evasive", "sentence")]
    assert rude["accuracy"] == 1 and rude["points"] == pytest.approx(0)
    assert evasive["accuracy"] == 0 and evasive["points"] == pytest.approx(50)


def test_helpful_ranks_correct_polite_answers_above_rude_and_wrong(trained, world):
    reward_model, _, _ = trained
    by_style = rewards_by_style(reward_model, world, n=1500)
    good = torch.cat([by_style["sentence"], by_style["friendly"]]).mean()
    assert good > by_style["rude"].mean() + 0.5
    assert good > by_style["wrong"].mean() + 0.3
    # answer by answer, on the same prompts (held-out ones): a correct sentence beats a rude one
    rng = random.Random(0)
    prompts = world.split_prompts()[1]
    polite = reward_model.score(prompts, [world.task.answer(p, "sentence", rng) for p in prompts])
    rude = reward_model.score(prompts, [world.task.answer(p, "rude", rng) for p in prompts])
    wrong = reward_model.score(prompts, [world.task.answer(p, "wrong", rng) for p in prompts])
    assert (polite > rude).float().mean() > 0.8
    assert (polite > wrong).float().mean() > 0.6


def test_noise_ceiling_follows_the_labelers_definition(world):
    p = world.prompts[0]
    pairs = [Comparison(p, "The capital of France is Paris.", "Ugh, paris. Obviously.")] * 3
    careful = SimulatedLabeler(world, "helpful", temperature=0.1)
    sloppy = SimulatedLabeler(world, "helpful", temperature=100.0)
    assert noise_ceiling(careful, pairs) == pytest.approx(1.0, abs=1e-6)
    assert noise_ceiling(sloppy, pairs) == pytest.approx(0.5, abs=0.02)
    u = world.gold(p, pairs[0].chosen) - world.gold(p, pairs[0].rejected)
    assert (noise_ceiling(SimulatedLabeler(world, "helpful"), pairs)
            == pytest.approx(1 / (1 + math.exp(-abs(u)))))


def test_noise_ceiling_of_a_side_blind_model_under_a_position_bias(world):
    """With position bias b and random sides, the best side-blind model is right with
    probability 1/2 [sigmoid(|du|/T + b) + sigmoid(|du|/T - b)], averaged over pairs; checked
    against the closed form and against the labels such a labeler really gives."""
    labeler = SimulatedLabeler(world, "helpful", position_bias=0.7, seed=0)
    rng = random.Random(0)
    rows = world.corpus(3000, seed=5)
    pairs = [(rows[i][0], rows[i][1], world.task.answer(rows[i][0], rng.choice(
        ["terse", "sentence", "rude", "wrong", "friendly"]), rng)) for i in range(len(rows))]
    pairs = [(p, a, b) for p, a, b in pairs if a != b]
    closed, oracle_right = [], []
    for p, a, b in pairs:
        du = abs(world.gold(p, a) - world.gold(p, b))
        closed.append(0.5 * (1 / (1 + math.exp(-(du + 0.7))) + 1 / (1 + math.exp(-(du - 0.7)))))
    comparisons = []
    for p, a, b in pairs:
        left, right = (a, b) if rng.random() < 0.5 else (b, a)      # sides a coin flip
        left_wins = labeler.choose(p, left, right) == "A"
        chosen, rejected = (left, right) if left_wins else (right, left)
        comparisons.append(Comparison(p, chosen, rejected))
        u_c, u_r = world.gold(p, chosen), world.gold(p, rejected)
        oracle_right.append((u_c > u_r) + 0.5 * (u_c == u_r))
    ceiling = noise_ceiling(labeler, comparisons)
    assert ceiling == pytest.approx(sum(closed) / len(closed), abs=0.01)
    observed = sum(oracle_right) / len(oracle_right)
    assert abs(observed - ceiling) < 3 * math.sqrt(ceiling * (1 - ceiling) / len(pairs))
    # the old reading (the chosen answer as if it had been shown left) overstated it
    old = [labeler.prob_left(c.prompt, c.chosen, c.rejected) for c in comparisons]
    assert sum(max(q, 1 - q) for q in old) / len(old) > ceiling + 0.02


def test_calibration_bins():
    r_chosen, r_rejected = torch.tensor([3.0, 0.1, -2.0, 1.0]), torch.zeros(4)
    cal = calibration(r_chosen, r_rejected, bins=5)
    assert sum(cal["count"]) == 8                          # every pair counted in both orders
    assert all(0 <= q <= 1 for q in cal["predicted"] + cal["observed"])
    assert cal["predicted"] == sorted(cal["predicted"])


def test_save_and_load_round_trip(trained, tmp_path, world):
    reward_model, _, heldout = trained
    reward_model.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm")
    assert (loaded.mean, loaded.std) == (reward_model.mean, reward_model.std)
    prompts, texts = [c.prompt for c in heldout[:20]], [c.chosen for c in heldout[:20]]
    assert torch.allclose(loaded.score(prompts, texts), reward_model.score(prompts, texts),
                          atol=1e-5)
    assert torch.allclose(loaded(prompts, texts), loaded.score(prompts, texts))
    assert loaded.log_prob_gate.lm_head.weight is loaded.model.get_input_embeddings().weight  # tied
    # a folder without the gate (a reward model trained elsewhere, e.g. by TRL): the last token only
    (tmp_path / "rm" / "log_prob_gate.safetensors").unlink()
    plain = RewardModel.load(tmp_path / "rm")
    assert plain.log_prob_gate is None
    batch = encode_completions(plain.tokenizer, prompts, texts, plain.device)
    with torch.no_grad():
        hidden = plain.model.base_model(input_ids=batch.input_ids,
                                        attention_mask=batch.attention_mask,
                                        position_ids=position_ids(batch.attention_mask))
        hidden = hidden.last_hidden_state
        at_eos = plain.model.score(hidden[:, -1]).squeeze(-1)
    eos_last = batch.completion_mask[:, -1].bool().cpu()    # rows whose <eos> is the last column
    assert eos_last.any()
    plain_scores = plain.score(prompts, texts, normalize=False)
    assert torch.allclose(plain_scores[eos_last], at_eos.cpu()[eos_last], atol=1e-5)
