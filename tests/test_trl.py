"""TRL 1.16 in and out: every preference layout TRL documents is read back or refused with its
line; TRL's RewardTrainer trains a step on what we write, on the same tokens as the package;
a reward model TRL trained loads as a ``RewardModel``. Offline: the models are built here."""
import json
import logging
import random

import pytest
import torch

from rlhf_lite import STYLES, LabelStore, RewardModel
from rlhf_lite.label_store import left_choice_rate
from rlhf_lite.models import encode_completions, generate
from rlhf_lite.preferences import Comparison, read_trl_jsonl, write_trl_jsonl
from rlhf_lite.trl_format import from_trl

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def bpe(world):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on the world's corpus: unlike the
    course's word-level one, it tells " Paris" from "Paris"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator([f"{p} {a}" for p, a, _ in world.corpus(500, seed=0)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def comparisons(world):
    """Two answers to the same prompt in two styles, differing from their first letter (so that
    an implicit prompt is the prompt itself)."""
    rng, out = random.Random(0), []
    while len(out) < 12:
        prompt = rng.choice(world.prompts)
        a, b = (world.task.answer(prompt, s, rng) for s in rng.sample(STYLES, 2))
        if a[:1] != b[:1]:
            out.append(Comparison(prompt, a, b))
    return out


def reward_trainer(path, tokenizer, out_dir):
    """TRL's RewardTrainer on a tiny GPT-2 classifier, after one step on the file at ``path``."""
    from transformers import GPT2Config, GPT2ForSequenceClassification
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id))
    args = trl.RewardConfig(output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=4,
                            report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = trl.RewardTrainer(model=model, args=args, processing_class=tokenizer,
                                train_dataset=datasets.Dataset.from_json(str(path)))
    assert trainer.train().global_step == 1
    return trainer


def package_ids(tokenizer, c, answer):
    """The tokens the package trains its reward model on: prompt, " " + answer, <eos>."""
    return encode_completions(tokenizer, [c.prompt], [answer], "cpu").input_ids[0].tolist()


# --- out: TRL trains on our export, on our tokens -----------------------------------------------

def test_trl_trains_on_the_export_with_the_same_tokens_as_the_package(tmp_path, bpe, comparisons):
    path = tmp_path / "preferences.jsonl"
    assert write_trl_jsonl(comparisons, path) == len(comparisons)
    row = json.loads(path.read_text().splitlines()[0])
    assert row == {"prompt": comparisons[0].prompt, "chosen": " " + comparisons[0].chosen,
                   "rejected": " " + comparisons[0].rejected}      # TRL's own data's spacing
    dataset = reward_trainer(path, bpe, tmp_path / "trl").train_dataset
    for c, seen in zip(comparisons, dataset):
        assert seen["chosen_ids"] == package_ids(bpe, c, c.chosen)
        assert seen["rejected_ids"] == package_ids(bpe, c, c.rejected)
    # without the leading space TRL would glue prompt and answer into other tokens
    glued = [bpe(c.prompt + c.chosen + bpe.eos_token).input_ids for c in comparisons]
    assert sum(g != package_ids(bpe, c, c.chosen) for g, c in zip(glued, comparisons)) > 0
    assert [(c.prompt, c.chosen, c.rejected) for c in read_trl_jsonl(path)] == \
        [(c.prompt, c.chosen, c.rejected) for c in comparisons]


def layout_rows(comparisons, layout):
    """The same comparisons in each of TRL's four layouts, as TRL documents them."""
    if layout == "standard_implicit":
        return [dict(chosen=f"{c.prompt} {c.chosen}", rejected=f"{c.prompt} {c.rejected}")
                for c in comparisons]
    user = lambda c: dict(role="user", content=c.prompt)               # noqa: E731
    answer = lambda text: dict(role="assistant", content=text)         # noqa: E731
    return [dict(chosen=[user(c), answer(c.chosen)], rejected=[user(c), answer(c.rejected)])
            for c in comparisons]


@pytest.mark.parametrize("layout", ["standard", "conversational", "standard_implicit",
                                    "conversational_implicit"])
def test_every_layout_trains_in_trl_and_reads_back(tmp_path, bpe, comparisons, layout):
    path = tmp_path / f"{layout}.jsonl"
    if layout in ("standard", "conversational"):
        write_trl_jsonl(comparisons, path, layout=layout)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in layout_rows(comparisons, layout)))
    chat = bpe.__class__(tokenizer_object=bpe.backend_tokenizer, pad_token="<pad>",
                         eos_token="<eos>", chat_template=TEMPLATE)
    reward_trainer(path, chat if "conversational" in layout else bpe, tmp_path / "trl")
    back = read_trl_jsonl(path)   # conversational: the plain rendering gives the texts back
    assert [(c.prompt, c.chosen, c.rejected) for c in back] == \
        [(c.prompt, c.chosen, c.rejected) for c in comparisons]
    if "conversational" in layout:   # with a chat template, the template's own text
        c, first = comparisons[0], read_trl_jsonl(path, tokenizer=chat)[0]
        assert (first.prompt, first.chosen) == (f"<user> {c.prompt}\n<assistant>",
                                                f" {c.chosen}\n")


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": 5, "rejected": " b"}', "chosen must be text or a list of "
                                                       "messages, got 5"),
    ('{"prompt": null, "chosen": " a", "rejected": " b"}', "prompt must be text .* got null"),
    ("5", "a preference row is a JSON object, got int"),
    ("[1, 2]", "a preference row is a JSON object, got list"),
    (b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}', r"not UTF-8 text \(byte 0xe9"),
    ('{"prompt": "p", "chosen": " a"}', "lacks rejected"),
    ('{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}',
     "mixes layouts: prompt is text, chosen is messages, rejected is text"),
    ('{"chosen": [{"role": "user"}], "rejected": [{"role": "user", "content": "q"}]}',
     "chosen is a list but not of messages"),
    ('{"prompt": "p", "completion": " a", "label": true}', "an unpaired preference row"),
    ('{"chosen": "abc", "rejected": "xyz"}', "share no start"),
    ('{"prompt": "p", "chosen": " a", "rejected": " b", "tie": "yes"}', "tie must be true or"),
    ('{"id": 1, "event": "label", "prompt": "p", "left": "a", "right": "b", "choice": "A"}',
     "this is a LabelStore file"),
    ('{"prompt": "p", "chosen": " a", ', "not valid JSON"),
])
def test_a_row_in_no_layout_is_refused_with_its_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = b'{"prompt": "p", "chosen": " a", "rejected": " b"}\n'
    path.write_bytes(good + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
        read_trl_jsonl(path)
    rows = [json.loads(good)] + ([json.loads(line)] if message != "not valid JSON"
                                 and not isinstance(line, bytes) else [])
    if len(rows) == 2:   # rows (a list or a Dataset) are refused the same way, by index
        with pytest.raises(ValueError, match=f"row 1: .*{message}"):
            from_trl(rows)


# --- ties and both-bad: said, and optional --------------------------------------------------------

def test_ties_and_both_bad_are_counted_and_can_be_kept(tmp_path, caplog):
    store = LabelStore(tmp_path / "labels.jsonl")
    for i, choice in enumerate(["A", "B", "tie", "both_bad", "B"]):
        store.label(f"p{i}", f"left {i}", f"right {i}", choice)
    with caplog.at_level(logging.WARNING, logger="rlhf_lite"):
        assert store.export_trl(tmp_path / "out.jsonl") == 3
    assert "leaves out 1 tie(s) and 1 both-bad judgement(s) of 5" in caplog.text
    caplog.clear()
    assert store.export_trl(tmp_path / "all.jsonl", ties=True, both_bad=True) == 5
    assert not caplog.text
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [(r["tie"], r["both_bad"]) for r in rows] == \
        [(False, False), (False, False), (True, False), (False, True), (False, False)]
    assert read_trl_jsonl(tmp_path / "all.jsonl", labeler="you") == store.comparisons()


# --- in: into a LabelStore -----------------------------------------------------------------------

def test_a_trl_file_imports_into_a_label_store_once(tmp_path, comparisons):
    path = tmp_path / "preferences.jsonl"
    write_trl_jsonl(comparisons, path)
    store = LabelStore(tmp_path / "labels.jsonl")
    store.label(comparisons[0].prompt, comparisons[0].rejected, comparisons[0].chosen, "A",
                swapped=False)                                 # your own label of one pair
    assert len(store.import_trl(path)) == len(comparisons)
    assert store.import_trl(path) == []                        # a second import adds nothing
    reread = LabelStore(tmp_path / "labels.jsonl")
    assert reread.counts() == {"imported": len(comparisons)}   # the latest human label wins
    assert [(c.prompt, c.chosen, c.rejected) for c in reread.comparisons()] == \
        [(c.prompt, c.chosen, c.rejected) for c in comparisons]
    store.label(comparisons[1].prompt, comparisons[1].rejected, comparisons[1].chosen, "A",
                swapped=True)                                  # and yours, after the import
    assert store.counts() == {"imported": len(comparisons) - 1, "you": 1}
    assert left_choice_rate(store.current_labels())[1] == 1   # imported sides were never shown
    rows = datasets.Dataset.from_json(str(path))
    other = LabelStore(tmp_path / "other.jsonl")
    assert len(other.import_trl(rows, labeler="team")) == len(comparisons)
# --- a reward model trained by TRL loads as a RewardModel -----------------------------------------

def test_a_reward_model_trained_by_trl_loads_and_is_normalised(tmp_path, bpe, comparisons, world,
                                                               caplog):
    from transformers import GPT2Config, GPT2LMHeadModel
    path = tmp_path / "preferences.jsonl"
    write_trl_jsonl(comparisons, path)
    reward_trainer(path, bpe, tmp_path / "trl").save_model(str(tmp_path / "trl_rm"))
    with pytest.raises(FileNotFoundError, match="no normalization.json .* Pass base_model="):
        RewardModel.load(tmp_path / "trl_rm")
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=len(bpe), n_positions=256, n_embd=32, n_layer=1,
                                      n_head=2, eos_token_id=bpe.eos_token_id,
                                      pad_token_id=bpe.pad_token_id)).eval()
    prompts = world.prompts[:16]
    with caplog.at_level(logging.WARNING, logger="rlhf_lite"):
        reward_model = RewardModel.load(tmp_path / "trl_rm", base_model=base, prompts=prompts,
                                        n_samples=64, max_new_tokens=8)
    assert "has no normalization.json: normalising its rewards on 64 samples of the base " \
        "model" in caplog.text
    batch = generate(base, reward_model.tokenizer, [prompts[i % 16] for i in range(64)], 8, seed=0)
    scores = reward_model.score_completions(batch)
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std().item() - 1) < 1e-3
    reward_model.save(tmp_path / "ours")                       # now with its normalization.json
    again = RewardModel.load(tmp_path / "ours")
    assert (again.mean, again.std) == pytest.approx((reward_model.mean, reward_model.std))
