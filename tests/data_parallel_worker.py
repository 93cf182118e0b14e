"""The first updates of the reward model and of PPO, for ``test_parallel``: called in the test's
own process (one process), and run by ``torchrun --nproc_per_node 2`` (two), on the same
global batches. Usage under a launcher: ``data_parallel_worker.py RUNS_DIR OUT_FILE``."""
import sys

import torch

from rlhf_lite import parallel
from rlhf_lite.critic_free import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from rlhf_lite.models import generate, get_base_model
from rlhf_lite.ppo import PPOConfig, PPOTrainer, take
from rlhf_lite.preferences import make_preference_dataset
from rlhf_lite.reward_model import train_reward_model
from rlhf_lite.world import SimulatedLabeler, World

EPISODES = 16


def first_updates(runs_dir) -> dict:
    """Reward model: 48 pairs, one epoch of 3 steps of 16 pairs. PPO, RLOO and GRPO: one
    iteration of 16 episodes, 2 epochs of one minibatch. Each process trains on its share of
    every batch."""
    torch.manual_seed(0)
    world = World("trivia", seed=0)
    base, tokenizer, _, _ = get_base_model(world, runs_dir=runs_dir, device="cpu")
    parallel.start("cpu")
    labeler = SimulatedLabeler(world, "helpful", seed=0)
    comparisons = parallel.from_main(make_preference_dataset(world, base, tokenizer, labeler,
                                                             n_pairs=48, seed=0))
    reward_model, history = train_reward_model(base, tokenizer, comparisons, heldout=0.0, epochs=1,
                                               batch_size=16, max_new_tokens=world.max_new_tokens,
                                               device="cpu")
    config = PPOConfig(steps=1, batch_size=EPISODES, minibatch_size=EPISODES, ppo_epochs=2,
                       max_new_tokens=world.max_new_tokens, seed=0)
    trainer = PPOTrainer(base, tokenizer, reward_model, world.prompts, config)
    # the same episodes as one process would sample: each process takes its share of them
    episodes = generate(base, tokenizer, world.prompts[:EPISODES], world.max_new_tokens, seed=0)
    mine, asked = parallel.share(torch.arange(EPISODES)), []
    trainer.sample = lambda prompts, seed=None: asked.append(len(prompts)) or take(episodes, mine)
    entry = trainer.step()
    moved = lambda model, start: torch.cat([(p - q).detach().flatten() for p, q in  # noqa: E731
                                            zip(model.parameters(), start.parameters())])
    result = {"processes": parallel.processes(), "episodes_sampled_here": asked[0],
              "reward_model_losses": history["train_loss"],
              "reward_model_step": moved(reward_model.model.base_model, base.base_model),
              "ppo": {k: entry[k] for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac",
                                            "reward", "kl", "entropy", "explained_variance")},
              "policy_step": moved(trainer.policy, base)}
    # RLOO (token mean, KL in the reward) and GRPO (mean per completion, KL in the loss): 4
    # prompts of 4 completions; each process takes 2 whole groups
    groups = generate(base, tokenizer, [p for p in world.prompts[:4] for _ in range(4)],
                      world.max_new_tokens, seed=1)
    for name, trainer_class, config_class in (("rloo", RLOOTrainer, RLOOConfig),
                                              ("grpo", GRPOTrainer, GRPOConfig)):
        config = config_class(steps=1, batch_size=EPISODES, minibatch_size=EPISODES, ppo_epochs=2,
                              samples_per_prompt=4, max_new_tokens=world.max_new_tokens, seed=0)
        trainer = trainer_class(base, tokenizer, reward_model, world.prompts, config)
        trainer.sample = lambda prompts, seed=None: take(groups, mine)
        entry = trainer.step()
        result[name] = {k: entry[k] for k in ("policy_loss", "approx_kl", "clipfrac", "reward",
                                              "kl", "entropy", "zero_std_fraction")}
        result[f"{name}_policy_step"] = moved(trainer.policy, base)
    return result


if __name__ == "__main__":
    result = first_updates(sys.argv[1])
    if parallel.is_main_process():
        torch.save(result, sys.argv[2])
    parallel.finish()
