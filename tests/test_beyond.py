"""Beyond PPO: DPO, SFT, best-of-n, its KL, the Gao et al. fits,
and over-optimisation against gold."""
import math
import random

import pytest
import torch

from rlhf_lite.beyond import (best_of_n, best_of_n_curve, best_of_n_weights, bon_kl, bon_kl_exact,
                              compare_methods, fit_gao, format_table, sample_candidates,
                              sequence_kl)
from rlhf_lite.dpo import dpo_loss, implicit_reward, sequence_logprobs, train_dpo, train_sft
from rlhf_lite.models import generate
from rlhf_lite.preferences import Comparison, make_preference_dataset
from rlhf_lite.world import SimulatedLabeler


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs(world, base):
    model, tokenizer = base
    labeler = SimulatedLabeler(world, "helpful", temperature=1.0, seed=0)
    return make_preference_dataset(world, model, tokenizer, labeler, n_pairs=200, seed=0)


# --- DPO and SFT -------------------------------------------------------------------------------

def test_dpo_loss_matches_a_hand_computation():
    beta = 0.5
    pi_w, pi_l = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    ref_w, ref_l = torch.tensor([-1.5, -2.0]), torch.tensor([-1.0, -1.0])
    loss, r_w, r_l = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta)
    # pair 1: 0.5 * (-1 + 1.5) - 0.5 * (-2 + 1) = 0.75; pair 2: 0.5 * (-3 + 2) - 0.5 * 0 = -0.5
    expected = (math.log(1 + math.exp(-0.75)) + math.log(1 + math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert r_w.tolist() == pytest.approx([0.25, -0.5])
    assert r_l.tolist() == pytest.approx([-0.5, 0.0])
    # at the reference, every pair costs log 2, whatever beta
    same = torch.tensor([-4.0, -7.0])
    assert dpo_loss(same, same - 1, same, same - 1, 0.1)[0].item() == pytest.approx(math.log(2))


def test_implicit_reward_is_zero_when_policy_is_reference_and_dpo_learns_the_labels(
        world, base, pairs):
    model, tokenizer = base
    prompts, chosen = [c.prompt for c in pairs[:16]], [c.chosen for c in pairs[:16]]
    assert implicit_reward(model, model, tokenizer, prompts, chosen).abs().max().item() == 0.0
    base_logps = sequence_logprobs(model, tokenizer, prompts, chosen)

    policy, history = train_dpo(model, tokenizer, pairs, epochs=2, batch_size=32, seed=0)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)     # starts at the reference
    late = sum(h["loss"] for h in history[-3:]) / 3
    assert late < history[0]["loss"] - 0.05, [h["loss"] for h in history]
    pair_prompts = [c.prompt for c in pairs]
    r_w = implicit_reward(policy, model, tokenizer, pair_prompts, [c.chosen for c in pairs])
    r_l = implicit_reward(policy, model, tokenizer, pair_prompts, [c.rejected for c in pairs])
    assert (r_w > r_l).float().mean().item() > 0.6   # it ranks the labelled pairs as the labels do
    # the reference is untouched
    assert torch.equal(sequence_logprobs(model, tokenizer, prompts, chosen), base_logps)


def test_sft_raises_the_likelihood_of_the_chosen_answers(base, pairs):
    model, tokenizer = base
    prompts, chosen = [c.prompt for c in pairs], [c.chosen for c in pairs]
    before = sequence_logprobs(model, tokenizer, prompts, chosen).mean().item()
    policy, history = train_sft(model, tokenizer, pairs, epochs=1, seed=0)
    after = sequence_logprobs(policy, tokenizer, prompts, chosen).mean().item()
    assert after > before + 0.1, (before, after)     # nats a sequence, on the 200 chosen answers
    assert len(history) == 7 and all(h["loss"] > 0 for h in history)


def test_dpo_and_sft_reject_data_without_preferences(base):
    model, tokenizer = base
    ties = [Comparison("Question: What colour is the sky? Answer:", "Blue.", "Blue!", tie=True)]
    with pytest.raises(ValueError, match="no comparison with a preference"):
        train_dpo(model, tokenizer, ties)
    with pytest.raises(ValueError, match="no comparison with a preference"):
        train_sft(model, tokenizer, ties)


# --- best-of-n and its KL -----------------------------------------------------------------------

def test_best_of_1_is_plain_sampling_and_best_of_n_keeps_the_best(world, base):
    model, tokenizer = base
    prompts = world.prompts[:24]
    plain = generate(model, tokenizer, prompts, 24, seed=7).texts
    assert best_of_n(model, tokenizer, prompts, 1, world.gold_many, seed=7).texts == plain

    result = best_of_n(model, tokenizer, prompts, 8, world.gold_many, seed=7)
    assert torch.equal(result.scores, result.candidate_scores.max(1).values)
    assert world.gold_many(prompts, result.texts) == pytest.approx(result.scores.tolist(), abs=1e-5)
    # the gold judge as reward helps
    assert result.scores.mean() > result.candidate_scores[:, 0].mean()
    assert result.kl == pytest.approx(math.log(8) - 7 / 8)


def test_bon_kl_formula_against_the_exact_kl_of_a_categorical():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert [bon_kl(n) for n in (1, 2, 4, 8, 16)] == sorted(bon_kl(n) for n in (1, 2, 4, 8, 16))
    with pytest.raises(ValueError):
        bon_kl(0)
    generator = torch.Generator().manual_seed(0)
    # many outcomes, each unlikely: as good as continuous, the formula is exact
    probs = torch.rand(20_000, generator=generator)
    probs /= probs.sum()
    scores = torch.randn(20_000, generator=generator)
    for n in (2, 4, 16, 64):
        assert bon_kl_exact(probs, scores, n) == pytest.approx(bon_kl(n), abs=2e-3)
    # a few likely outcomes: the formula is an upper bound, not reached
    small = torch.tensor([0.5, 0.3, 0.15, 0.05])
    for n in (2, 4, 16):
        assert bon_kl_exact(small, [3.0, 1.0, 0.0, 2.0], n) < bon_kl(n)


def test_bon_kl_exact_against_monte_carlo():
    rng = random.Random(0)
    probs, scores, n = [0.4, 0.3, 0.2, 0.1], [0.0, 2.0, 1.0, 3.0], 3
    counts = [0] * 4
    draws = 100_000
    for _ in range(draws):
        picks = rng.choices(range(4), probs, k=n)
        counts[max(picks, key=lambda i: scores[i])] += 1
    q = [c / draws for c in counts]
    monte_carlo = sum(qi * math.log(qi / pi) for qi, pi in zip(q, probs) if qi > 0)
    assert bon_kl_exact(probs, scores, n) == pytest.approx(monte_carlo, abs=0.01)


def test_best_of_n_weights_are_the_probability_of_being_the_best_of_a_random_subset():
    N = 6
    for n in (1, 2, 3, 6):
        w = best_of_n_weights(N, n)
        assert w.sum().item() == pytest.approx(1.0)
        subsets = __import__("itertools").combinations(range(N), n)
        counts = [0] * N
        for s in subsets:
            counts[max(s)] += 1
        assert w.tolist() == pytest.approx([c / sum(counts) for c in counts])


# --- the Gao et al. forms ------------------------------------------------------------------------

@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.2, 0.4), ("rl", 1.2, 0.6)])
def test_fit_gao_recovers_alpha_and_beta(form, alpha, beta):
    d = torch.linspace(0, 3, 20)
    shape = d * d if form == "bon" else torch.xlogy(d, d)
    noise = 0.01 * torch.randn(20, generator=torch.Generator().manual_seed(0))
    r = alpha * d - beta * shape + noise
    fit = fit_gao(d, r, form)
    assert fit.alpha == pytest.approx(alpha, abs=0.05) and fit.beta == pytest.approx(beta, abs=0.05)
    grid = torch.linspace(0.01, 5, 2000)
    assert fit.peak_d == pytest.approx(grid[torch.tensor(fit(grid)).argmax()].item(), abs=0.01)
    with pytest.raises(ValueError, match="form"):
        fit_gao(d, r, "ppo")


# --- over-optimisation against gold ----------------------------------------------------------

def test_best_of_n_over_optimises_weak_reward_models_gold_peaks_before_the_proxy(world, base):
    """Reward models on 20 labelled pairs are poor proxies: pick harder and harder against them
    (best-of-n, n up to 128) and their score keeps rising while gold turns down. Averaged over
    four such models (seeds 0-3), so that the test does not hang on one lucky or unlucky seed.
    Last-token reward models (``read_log_probs=False``): the default one also reads the base
    model's own log-probs, a proxy so good that gold falls only 0.07 from its peak at n = 128."""
    from rlhf_lite.reward_model import train_reward_model
    model, tokenizer = base
    prompts = world.split_prompts()[1]
    pool = sample_candidates(model, tokenizer, prompts, 128, world.max_new_tokens, seed=1)
    ns = [1, 2, 4, 8, 16, 32, 64, 128]
    curves = []
    for seed in range(4):
        labeler = SimulatedLabeler(world, "helpful", temperature=1.0, seed=seed)
        weak_pairs = make_preference_dataset(world, model, tokenizer, labeler, n_pairs=20,
                                             seed=seed)
        weak, _ = train_reward_model(model, tokenizer, weak_pairs, heldout=0.0, seed=seed,
                                     read_log_probs=False)
        curve = best_of_n_curve(prompts, pool, weak, world.gold_many, ns)
        # each proxy only rises
        assert all(b > a for a, b in zip(curve["proxy"], curve["proxy"][1:]))
        assert curve["win_rate"][0] == pytest.approx(0.5, abs=0.01)   # best-of-1 vs a plain sample
        assert math.isnan(curve["win_rate"][-1])          # n = N: no draw left to be the opponent
        curves.append(curve)
    assert curves[0]["d"] == pytest.approx([math.sqrt(bon_kl(n)) for n in ns])
    gold = [sum(c["gold"][k] for c in curves) / len(curves) for k in range(len(ns))]
    peak = max(range(len(ns)), key=lambda k: gold[k])
    assert 0 < peak < len(ns) - 1, gold                             # gold rises, then falls
    assert gold[-1] < gold[peak] - 0.15, gold
    fit = fit_gao(curves[0]["d"], [g - gold[0] for g in gold], "bon")
    # the fitted form turns down too; its peak near the observed one (on another CPU the averaged
    # curve, a little flatter, put it at 1.09x the largest d plotted)
    assert fit.beta > 0 and fit.peak_d < 1.25 * curves[0]["d"][-1], fit


def test_compare_methods_on_gold(world, base):
    model, tokenizer = base
    prompts = world.split_prompts()[1][:12]
    rows = compare_methods(world, model, tokenizer, prompts, policies={"copy of base": model},
                           best_of={"best-of-8 (gold)": (world.gold_many, 8)}, samples_per_prompt=2)
    by_name = {r["method"]: r for r in rows}
    assert list(by_name) == ["base", "copy of base", "best-of-8 (gold)"]
    assert by_name["copy of base"]["kl"] == 0.0
    assert by_name["best-of-8 (gold)"]["win_rate"] > 0.7
    assert by_name["best-of-8 (gold)"]["win_rate"].n == 2 * len(prompts)
    assert "95% CI" in format_table(rows)
    assert by_name["best-of-8 (gold)"]["kl"] == pytest.approx(bon_kl(8))
    assert sequence_kl(model, model, tokenizer, prompts) == 0.0


def test_best_of_n_win_rate_matches_a_fresh_simulation():
    """One pool of N = 16 per prompt (gold in {0..3}, proxy = gold + N(0, 1)): the pool's
    estimate of P(best-of-n beats a fresh sample) is within 2 standard errors of simulating
    best-of-n against an independent draw, at n = 4 and 8. The old estimator, which let the
    best-of-n answer play the draws it was picked against, read 0.736 and 0.802 here."""
    torch.manual_seed(0)
    B, N = 3000, 16
    gold = torch.randint(0, 4, (B, N)).double()
    proxy = gold + torch.randn(B, N, dtype=torch.float64)
    texts = [[f"{i}:{j}" for j in range(N)] for i in range(B)]
    table = {f"{i}:{j}": (proxy[i, j].item(), gold[i, j].item())
             for i in range(B) for j in range(N)}
    curve = best_of_n_curve([str(i) for i in range(B)], texts,
                            lambda p, t: [table[x][0] for x in t],
                            lambda p, t: [table[x][1] for x in t], [4, 8])
    M = 200_000
    for n, estimate in zip((4, 8), curve["win_rate"]):
        g = torch.randint(0, 4, (M, n + 1)).double()
        pick = (g[:, :n] + torch.randn(M, n, dtype=torch.float64)).argmax(1, keepdim=True)
        best, other = g[:, :n].gather(1, pick).squeeze(1), g[:, n]
        wins = (best > other).double() + 0.5 * (best == other).double()
        # standard error of the pool estimate: prompts are independent, each adds ~ wins' spread
        se = (wins.var() / B + wins.var() / M).sqrt().item()
        assert abs(estimate - wins.mean().item()) < 2 * se, (n, estimate, wins.mean().item(), se)


def test_best_of_n_curve_gives_each_prompts_gold_whose_mean_is_the_curve():
    """gold_by_prompt[k] holds each prompt's E[gold of best-of-n]; its mean is gold[k]. With the
    proxy equal to gold, best-of-N on a prompt is that prompt's best gold."""
    B, N = 5, 8
    torch.manual_seed(1)
    gold = torch.randn(B, N, dtype=torch.float64)
    texts = [[f"{i}:{j}" for j in range(N)] for i in range(B)]
    table = {f"{i}:{j}": gold[i, j].item() for i in range(B) for j in range(N)}
    score = lambda p, t: [table[x] for x in t]   # noqa: E731
    curve = best_of_n_curve([str(i) for i in range(B)], texts, score, score, [1, 4, N])
    for k in range(3):
        assert len(curve["gold_by_prompt"][k]) == B
        assert sum(curve["gold_by_prompt"][k]) / B == pytest.approx(curve["gold"][k])
    assert curve["gold_by_prompt"][0] == pytest.approx(gold.mean(1).tolist())
    assert curve["gold_by_prompt"][-1] == pytest.approx(gold.max(1).values.tolist())


def test_plot_overoptimisation_puts_proxy_and_gold_on_two_axes_with_zero_at_one_height():
    """Proxy and gold are in different units: two y-axes, each labelled, and zero at the same
    height on both, with the runs of other seeds inside the limits."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rlhf_lite.beyond import plot_overoptimisation
    d = [0.0, 0.5, 1.0, 1.5, 2.0]
    curve = {"d": d, "proxy": [0.0, 1.0, 2.0, 3.0, 4.0], "gold": [1.0, 1.5, 1.8, 1.2, -0.5]}
    other = {"d": d, "gold": [1.0, 1.2, 0.9, -2.0, -3.0]}
    ax = plot_overoptimisation(curve, fit_gao(d, [g - 1.0 for g in curve["gold"]]), runs=[other])
    gold_axis, proxy_axis = ax, ax.proxy_axis
    assert "gold" in gold_axis.get_ylabel() and "proxy" in proxy_axis.get_ylabel()
    (g0, g1), (p0, p1) = gold_axis.get_ylim(), proxy_axis.get_ylim()
    assert -g0 / (g1 - g0) == pytest.approx(-p0 / (p1 - p0))      # zero at one height
    assert g0 <= -4.0 and p1 >= 4.0                                  # every line inside
    plt.close("all")
