"""The world: the judge on a table of texts, criteria orderings, labelers, reproducibility."""
import collections
import math

import pytest

from rlhf_lite.world import (CRITERIA, STYLE_MIX, STYLES, SimulatedLabeler, World, get_criteria,
                             make_task, sigmoid)

FRANCE = "Question: What is the capital of France? Answer:"


@pytest.mark.parametrize("text, expected", [
    ("Paris.", dict(correct=1, wrong=0, rude=0, friendly=0, length=1)),
    ("The capital of France is Paris.", dict(correct=1, wrong=0, complete_sentence=1, length=6)),
    ("The capital of France is Berlin.", dict(correct=0, wrong=1, complete_sentence=1)),
    ("Berlin.", dict(correct=0, wrong=1)),
    ("Ugh, Paris. Obviously, you idiot.", dict(correct=1, rude=3)),
    ("Great question! The capital of France is Paris. Hope this helps!",
     dict(correct=1, friendly=3)),
    ("I do not know.", dict(correct=0, evasive=1, on_topic=0)),
    ("I like turtles.", dict(correct=0, on_topic=0, wrong=0)),
    ("Paris is Paris is Paris is Paris.", dict(correct=1)),   # repetition checked below
    ("", dict(correct=0, length=0, on_topic=0)),
])
def test_judge_trivia_table(world, text, expected):
    features = world.features(FRANCE, text)
    for name, value in expected.items():
        assert features[name] == value, (text, name, features)


def test_judge_measures_repetition_and_length(world):
    terse = world.features(FRANCE, "Paris.")
    rambling = world.features(FRANCE, "Paris is Paris is Paris is Paris.")
    assert terse["repetition"] == 0 and rambling["repetition"] > 0.3
    assert rambling["length"] > terse["length"]


def test_judge_reads_any_text_not_only_templates(world):
    # a jumble a half-trained model might write: still judged, not an error
    f = world.features(FRANCE, "France is is the Paris capital Oslo")
    assert f["correct"] == 1 and f["wrong"] == 1


def test_sum_questions_do_not_count_the_question_as_an_answer(world):
    prompt = "Question: What is two plus one? Answer:"
    assert world.features(prompt, "Two plus one is three.")["wrong"] == 0
    assert world.features(prompt, "Two plus one is two.")["correct"] == 0


def test_judge_summaries_key_fact_dropped_or_invented():
    world = World("summaries")
    prompt = next(p for p in world.prompts if "won the race" in p and "lives in" in p)
    city = next(w for w in ["Rome", "Oslo", "Lima", "Cairo"] if w in prompt)
    other_city = next(w for w in ["Rome", "Oslo", "Lima", "Cairo"] if w not in prompt)
    name = prompt.split()[1]
    keeps = world.features(prompt, f"{name} won the race.")
    drops = world.features(prompt, f"{name} lives in {city}.")
    invents = world.features(prompt, f"{name} won the race. {name} lives in {other_city}.")
    assert (keeps["correct"], keeps["wrong"]) == (1, 0)
    assert (drops["correct"], drops["wrong"]) == (0, 0)
    assert (invents["correct"], invents["wrong"]) == (1, 1)
    helpful = get_criteria("helpful")
    assert helpful.utility(keeps) > helpful.utility(drops)
    assert helpful.utility(keeps) > helpful.utility(invents)


def test_unknown_prompt_is_a_clear_error(world):
    with pytest.raises(KeyError, match="does not know this prompt"):
        world.features("What is love?", "Baby don't hurt me")


def test_helpful_prefers_a_correct_polite_sentence(world):
    good = world.gold(FRANCE, "The capital of France is Paris.", "helpful")
    for worse in ["Ugh, Paris. Obviously.", "The capital of France is Berlin.", "I do not know.",
                  "I like turtles.",
                  "The capital of France is Paris. Stop asking stupid questions."]:
        assert good > world.gold(FRANCE, worse, "helpful"), worse


def test_presets_disagree_the_way_their_guidelines_say(world):
    terse, friendly = "Paris.", "Great question! The capital of France is Paris. Hope this helps!"
    assert world.gold(FRANCE, terse, "concise") > world.gold(FRANCE, friendly, "concise")
    assert world.gold(FRANCE, friendly, "friendly") > world.gold(FRANCE, terse, "friendly")


@pytest.mark.parametrize("make, match", [
    (lambda: World("poetry"), "valid tasks: trivia, summaries"),
    (lambda: get_criteria("nice"), "valid presets: helpful, concise, friendly"),
    (lambda: SimulatedLabeler(World(), "rude"), "valid presets"),
    (lambda: SimulatedLabeler(World(), temperature=0), "temperature must be > 0"),
])
def test_bad_names_get_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_every_corpus_answer_is_judged_as_the_style_it_was_written_in():
    for task in ["trivia", "summaries"]:
        world = World(task)
        for prompt, answer, style in world.corpus(3000):
            assert world.style(prompt, answer) == style, (prompt, answer, style)


def test_corpus_mixes_all_styles_in_the_stated_shares(world):
    rows = world.corpus(20_000)
    counts = collections.Counter(style for *_, style in rows)
    assert set(counts) == set(STYLES)
    for style, share in STYLE_MIX.items():
        assert abs(counts[style] / len(rows) - share) < 0.01


def test_trivia_has_five_families_and_several_phrasings(world):
    france = [p for p in world.prompts if "France" in p]
    assert len(france) >= 3
    assert len({p.split()[1:3].__str__() for p in world.prompts}) >= 5


@pytest.mark.parametrize("task", ["trivia", "summaries"])
def test_heldout_prompts_ask_facts_no_training_prompt_asks(task):
    world = World(task, seed=0)
    train, heldout = world.split_prompts()
    train_facts, heldout_facts = {world.fact(p) for p in train}, {world.fact(p) for p in heldout}
    assert train_facts.isdisjoint(heldout_facts)
    assert sorted(train + heldout) == sorted(world.prompts)
    assert 0.15 < len(heldout_facts) / (len(train_facts) + len(heldout_facts)) < 0.3
    families = {f.split(":")[0] for f in train_facts | heldout_facts}
    assert {f.split(":")[0] for f in heldout_facts} == families      # every family is tested
    if task == "trivia":   # every phrasing of a held-out fact is held out
        france = [p for p in world.prompts if world.fact(p) == "capital:France"]
        assert len(france) == 4 and len({p in heldout for p in france}) == 1


def test_same_seed_same_world_other_seed_other_world():
    assert World(seed=3).corpus(200) == World(seed=3).corpus(200)
    assert World(seed=3).corpus(200) != World(seed=4).corpus(200)
    assert make_task("summaries", 1).prompts == make_task("summaries", 1).prompts


@pytest.mark.parametrize("temperature, bias", [(1.0, 0.0), (0.5, 0.0), (2.0, 0.7)])
def test_labeler_agreement_matches_its_sigmoid(world, temperature, bias):
    left, right = "The capital of France is Paris.", "Paris."
    labeler = SimulatedLabeler(world, "helpful", temperature=temperature, position_bias=bias,
                               seed=1)
    u = world.gold(FRANCE, left) - world.gold(FRANCE, right)
    p = sigmoid(u / temperature + bias)
    assert labeler.prob_left(FRANCE, left, right) == pytest.approx(p)
    n = 4000
    observed = sum(labeler.choose(FRANCE, left, right) == "A" for _ in range(n)) / n
    assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / n)  # within 4 standard errors


def test_labeler_is_reproducible_from_its_seed(world):
    a = SimulatedLabeler(world, seed=5)
    b = SimulatedLabeler(world, seed=5)
    pairs = [(p, "Paris.", "I like turtles.") for p in world.prompts[:50]]
    assert [a.choose(*x) for x in pairs] == [b.choose(*x) for x in pairs]


def test_criteria_presets_have_guidelines():
    assert {"helpful", "concise", "friendly"} <= set(CRITERIA)
    assert all(len(c.guidelines) > 30 for c in CRITERIA.values())
