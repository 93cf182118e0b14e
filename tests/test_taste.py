"""Your taste: the fit recovers a labeler's weights, says how sure it is, and the stand-in built
from it labels by exactly the linear model that was fitted. No model needed: the pairs here are
two internet answers to the same prompt."""
import random

import numpy as np
import pytest

from rlhf_lite import CRITERIA, Criteria, SimulatedLabeler
from rlhf_lite.preferences import Comparison, simulate_comparisons
from rlhf_lite.taste import (MIN_LABELS, TASTE_FEATURES, answer_features, fit_taste, prior_centre)
from rlhf_lite.world import FEATURES


def corpus_pairs(world, n, seed=0):
    """``n`` pairs of two different internet answers to one prompt."""
    by_prompt = {}
    for prompt, answer, _ in world.corpus(max(20 * n, 2000), seed=seed):
        by_prompt.setdefault(prompt, set()).add(answer)
    rng, pairs = random.Random(seed), []
    prompts = sorted(p for p, answers in by_prompt.items() if len(answers) > 1)
    while len(pairs) < n:
        prompt = rng.choice(prompts)
        a, b = rng.sample(sorted(by_prompt[prompt]), 2)
        pairs.append((prompt, a, b))
    return pairs


def labels_of(world, criteria, pairs, seed=0, temperature=1.0):
    labeler = SimulatedLabeler(world, criteria, temperature, seed=seed, name="you")
    return simulate_comparisons(labeler, pairs)


def utility_is_linear(world, criteria, weights, pairs, target_length):
    w = np.array([weights[k] for k in TASTE_FEATURES])
    for prompt, a, b in pairs:
        for text in (a, b, a + " " + b + " great great great ugh ugh ugh"):   # caps and long texts
            x = answer_features(world, prompt, text, target_length)
            assert criteria.utility(world.features(prompt, text)) == pytest.approx(w @ x, abs=1e-12)


def test_the_fitted_criteria_utility_is_exactly_the_fitted_linear_model(world):
    pairs = corpus_pairs(world, 300)
    taste = fit_taste(world, labels_of(world, "concise", pairs[:200]), "helpful")
    assert taste.fitted
    criteria = taste.criteria
    assert set(criteria.weights) == set(FEATURES)
    assert criteria.target_length == CRITERIA["helpful"].target_length
    utility_is_linear(world, criteria, taste.weights, pairs[200:], criteria.target_length)
    # and every preset is exactly its prior's centre, w0 . x: the prior is the preset itself
    for name, preset in CRITERIA.items():
        utility_is_linear(world, preset, prior_centre(preset), pairs[200:230], preset.target_length)


def test_many_labels_recover_the_labelers_weights_within_their_intervals(world):
    weights = dict(correct=2.0, wrong=-2.5, rude=-1.5, friendly=1.0, evasive=-1.0, on_topic=0.5,
                   complete_sentence=0.0, length=-0.3, repetition=-1.0)
    truth = Criteria("truth", weights, target_length=10, length_cost=0.2, guidelines="")
    taste = fit_taste(world, labels_of(world, truth, corpus_pairs(world, 3000)), "helpful")
    expected = dict(truth.weights, length_past_target=-truth.length_cost)
    inside = [k for k in ("correct", "wrong", "rude", "friendly", "evasive", "length")
              if taste.interval(k)[0] <= expected[k] <= taste.interval(k)[1]]
    assert len(inside) >= 5, (taste, inside)
    assert abs(taste.weights["length"] - expected["length"]) < 0.1
    assert taste.accuracy > taste.preset_accuracy     # it predicts them better than the preset


def test_a_few_dozen_labels_give_a_stable_estimate_near_the_labelers_own(world):
    """40 labels from a concise labeler (0.4 a word past 2 words), five different sets: length is
    weighed against in each, with the labeler's -0.4 a word inside each interval; the estimates
    vary less than their intervals say, and more labels shrink the intervals."""
    pairs = corpus_pairs(world, 600, seed=1)
    tastes = [fit_taste(world, labels_of(world, "concise", pairs[40 * i:40 * (i + 1)], seed=i),
                        "helpful") for i in range(5)]
    lengths = [t.weights["length"] for t in tastes]
    assert all(t.fitted for t in tastes) and max(lengths) < -0.15, lengths
    assert all(t.interval("length")[0] < -0.4 < t.interval("length")[1] for t in tastes)
    spread = np.std([t.weights["length"] for t in tastes])
    assert spread < np.mean([t.std["length"] for t in tastes])
    more = fit_taste(world, labels_of(world, "concise", pairs), "helpful")
    assert all(more.std[k] < tastes[0].std[k] for k in TASTE_FEATURES)


def test_too_few_labels_use_the_preset_and_say_so(world):
    labels = labels_of(world, "concise", corpus_pairs(world, MIN_LABELS - 1))
    taste = fit_taste(world, labels, "friendly")
    assert not taste.fitted and taste.criteria is CRITERIA["friendly"]
    assert taste.weights == prior_centre("friendly")
    assert f"{MIN_LABELS - 1} labels are too few" in str(taste) and "friendly preset" in str(taste)
    assert taste.accuracy_n == MIN_LABELS - 1 and 0 <= taste.preset_accuracy <= 1
    assert fit_taste(world, labels + labels[:1], "friendly").fitted


def test_both_bad_is_left_out_and_ties_pull_towards_no_difference(world):
    pairs = corpus_pairs(world, 200, seed=2)
    labels = labels_of(world, "friendly", pairs[:60])
    base = fit_taste(world, labels, "helpful")
    both_bad = [Comparison(p, a, b, both_bad=True) for p, a, b in pairs[60:100]]
    with_both_bad = fit_taste(world, labels + both_bad, "helpful")
    assert with_both_bad.weights == pytest.approx(base.weights) and with_both_bad.n_labels == 60
    # ties between a friendly and a plain answer say friendliness makes no difference
    friendly_vs_plain = [(p, a, b) for p, a, b in pairs if world.features(p, a)["friendly"] > 0
                         and world.features(p, b)["friendly"] == 0][:20]
    ties = [Comparison(p, a, b, tie=True) for p, a, b in friendly_vs_plain]
    assert len(ties) >= 5
    with_ties = fit_taste(world, labels + ties, "helpful")
    x = lambda text, c: answer_features(world, c.prompt, text, 10)  # noqa: E731
    d = [x(c.chosen, c) - x(c.rejected, c) for c in ties]

    def margin(taste):
        return np.mean(np.abs(np.array(d) @ [taste.weights[k] for k in TASTE_FEATURES]))

    assert margin(with_ties) < margin(base)
    assert with_ties.accuracy_n == base.accuracy_n == 60          # ties are no prediction to score


def test_leave_one_out_accuracy_comes_with_its_interval(world):
    labels = labels_of(world, "concise", corpus_pairs(world, 80, seed=3))
    taste = fit_taste(world, labels, "helpful")
    low, high = taste.accuracy_ci95
    assert taste.accuracy_n == 80 and 0 <= low < taste.accuracy < high <= 1
    assert "n = 80" in str(taste) and "leave-one-out" in str(taste)


def test_the_stand_in_labels_by_the_taste_with_the_same_noise(world):
    taste = fit_taste(world, labels_of(world, "concise", corpus_pairs(world, 100)), "helpful")
    stand_in = taste.stand_in(world, temperature=0.7, seed=3)
    assert stand_in.criteria == taste.criteria
    assert (stand_in.temperature, stand_in.name) == (0.7, "stand-in")
    prompt, a, b = corpus_pairs(world, 1, seed=4)[0]
    w = np.array([taste.weights[k] for k in TASTE_FEATURES])
    d = answer_features(world, prompt, a, 10) - answer_features(world, prompt, b, 10)
    assert stand_in.prob_left(prompt, a, b) == pytest.approx(1 / (1 + np.exp(-(w @ d) / 0.7)))
