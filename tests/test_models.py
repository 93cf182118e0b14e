"""Tokenizer, base model, generation and log-probs."""
import collections
import copy
import dataclasses

import pytest
import torch

from conftest import tiny_llama
from rlhf_lite.models import (answer_loss, build_tokenizer, completion_logprobs, encode_completions,
                              encode_corpus, generate, load_model, make_base_model, not_text_ids,
                              pretrain, sample, save_model)
from rlhf_lite.world import STYLE_MIX


def test_tokenizer_round_trip(world, tmp_path):
    tokenizer = build_tokenizer(world)
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for prompt, answer, _ in world.corpus(300):
        ids = tokenizer(answer, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids, answer
        assert tokenizer.decode(ids) == answer  # words and punctuation come back as written
        prompt_ids = tokenizer(prompt).input_ids
        assert prompt_ids == tokenizer(tokenizer.decode(prompt_ids)).input_ids
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Great question! The capital of France is Paris. Hope this helps!"
    assert again(text).input_ids == tokenizer(text).input_ids
    assert again.pad_token_id == tokenizer.pad_token_id


def test_decode_then_encode_is_the_identity_on_10000_generated_sequences(world):
    """What the reward model, DPO and SFT read (re-encoded text) must be the tokens PPO scored.
    An untrained model writes any token in any order (", ," and "? ." included)."""
    tokenizer = build_tokenizer(world)
    model = make_base_model(tokenizer, seed=3).eval()
    prompts = world.prompts[:100] * 100
    batch = generate(model, tokenizer, prompts, world.max_new_tokens, seed=0)
    again = encode_completions(tokenizer, batch.prompts, batch.texts, "cpu")
    assert torch.equal(again.prompt_ids, batch.prompt_ids)
    for i in range(len(prompts)):
        ids = batch.completion_ids[i, :int(batch.completion_mask[i].sum())].tolist()
        ids += [] if batch.ended[i] else [tokenizer.eos_token_id]   # encode closes with <eos>
        assert again.completion_ids[i, :len(ids)].tolist() == ids, batch.texts[i]
    written = batch.completion_ids[batch.completion_mask.bool()]
    assert not any(t in written for t in not_text_ids(tokenizer))      # never <pad> or <unk>


def test_top_k_samples_are_scored_under_the_distribution_they_came_from(world):
    tokenizer = build_tokenizer(world)
    model = make_base_model(tokenizer, seed=3).eval()
    for top_k in (None, 3):
        batch = generate(model, tokenizer, world.prompts[:64], world.max_new_tokens, top_k=top_k,
                         seed=0)
        with torch.no_grad():
            scored, entropy = completion_logprobs(model, batch, return_entropy=True)
        assert torch.allclose(scored, batch.logprobs, atol=1e-4), top_k
        assert torch.allclose(entropy, batch.entropy, atol=1e-4), top_k   # PPO's logp_old too
        if top_k is not None:     # each token is one of the 3 likeliest: log-prob >= log(1/3)-ish
            with torch.no_grad():
                full = completion_logprobs(model, dataclasses.replace(batch, top_k=None))
            assert (scored >= full - 1e-6).all() and (scored > full + 0.1).any()


def test_sample_draws_each_token_with_its_probability_and_never_a_zero_one():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.9, 0.1]]).repeat(50_000, 1)
    tokens = sample(probs, torch.Generator().manual_seed(0)).view(50_000, 2)
    for row in range(2):
        share = torch.bincount(tokens[:, row], minlength=4) / 50_000
        # within 4 standard errors of p (sqrt(p (1 - p) / n) <= 0.0023)
        assert (share - probs[row]).abs().max() < 0.009, share
        assert (share[probs[row] == 0] == 0).all()


def test_answer_loss_is_the_models_own_loss_on_the_labelled_tokens(world):
    tokenizer = build_tokenizer(world)
    model = make_base_model(tokenizer, seed=3)
    input_ids, labels = encode_corpus(tokenizer, world.corpus(32))
    ones = torch.ones_like(input_ids)
    expected = model(input_ids=input_ids, attention_mask=ones, labels=labels).loss
    assert torch.allclose(answer_loss(model, input_ids, ones, labels), expected, atol=1e-5)


def test_base_model_reproduces_the_corpus_style_mix(world, base):
    model, tokenizer = base
    prompts = world.prompts * 8
    texts = generate(model, tokenizer, prompts, max_new_tokens=48, seed=0).texts
    counts = collections.Counter(world.style(p, t) for p, t in zip(prompts, texts))
    for style, share in STYLE_MIX.items():
        share_seen = counts[style] / len(texts)
        assert abs(share_seen - share) < 0.05, (style, share_seen, share)
    assert counts["other"] / len(texts) < 0.03


def test_save_load_round_trip_gives_identical_logits(base, tmp_path):
    model, tokenizer = base
    save_model(model, tokenizer, tmp_path / "m")
    again, tok2 = load_model(tmp_path / "m", device="cpu")
    ids = tokenizer(["Question: What is the capital of Peru? Answer: Lima."],
                    return_tensors="pt").input_ids
    with torch.no_grad():
        # a CPU copy: the session's base model stays where it is (on CUDA when there is one)
        assert torch.equal(copy.deepcopy(model).cpu()(ids).logits, again(ids).logits)
    assert tok2.get_vocab() == tokenizer.get_vocab()


def test_same_seed_same_result(world):
    tokenizer = build_tokenizer(world)
    runs = []
    for _ in range(2):
        model = make_base_model(tokenizer, seed=1)
        losses = pretrain(model, tokenizer, world, steps=15, corpus_size=500, seed=1, device="cpu")
        texts = generate(model, tokenizer, world.prompts[:20], seed=7).texts
        runs.append((losses, texts, model.transformer.wte.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])
    assert runs[0][0][-1] < runs[0][0][0]  # and it learned something


def test_unknown_preset_and_missing_directory_are_clear_errors(world, tmp_path):
    with pytest.raises(ValueError, match="valid presets: tiny, small, gpu"):
        make_base_model(build_tokenizer(world), "huge")
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(tmp_path)


def test_generation_stops_at_eos_and_masks_after_it(world, base):
    model, tokenizer = base
    batch = generate(model, tokenizer, world.prompts[:64], max_new_tokens=40, seed=0)
    for ids, mask, ended in zip(batch.completion_ids, batch.completion_mask, batch.ended):
        eos = (ids == tokenizer.eos_token_id).nonzero()
        if ended:
            assert mask.sum() == eos[0, 0] + 1            # real tokens up to and including <eos>
            assert (ids[mask == 0] == tokenizer.pad_token_id).all()
        else:
            assert mask.all()


def test_left_padding_does_not_change_log_probs(world, base):
    model, tokenizer = base
    short = "Question: What is the capital of Peru? Answer:"
    long = "Question: Which word means the opposite of early? Answer:"
    alone = encode_completions(tokenizer, [short], ["Lima."], "cpu")
    padded = encode_completions(tokenizer, [short, long],
                                ["Lima.", "The opposite of early is late."], "cpu")
    assert padded.prompt_mask[0, 0] == 0  # the short prompt really was left-padded
    model = copy.deepcopy(model).cpu()          # the session's base model stays on its device
    with torch.no_grad():
        a = completion_logprobs(model, alone)[0, :3]
        b = completion_logprobs(model, padded)[0, :3]
    assert torch.allclose(a, b, atol=1e-5)


def test_a_users_own_model_directory_loads_and_generates(world, tmp_path):
    """Any local Hugging Face causal LM works in place of ours: here a tiny Llama."""
    tokenizer = build_tokenizer(world)
    save_model(tiny_llama(tokenizer), tokenizer, tmp_path / "llama")
    model, tok = load_model(tmp_path / "llama")
    assert type(model).__name__ == "LlamaForCausalLM"
    batch = generate(model, tok, world.prompts[:4], max_new_tokens=5, seed=0)
    assert len(batch.texts) == 4
    assert completion_logprobs(model, batch).shape == batch.completion_ids.shape
