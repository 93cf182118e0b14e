"""rlhf-lite: RLHF's three stages on a laptop, in a generated world with a known gold judge.

One module a stage, each read top to bottom:

- ``world``: tasks, the internet corpus, the judge, criteria, simulated labelers
- ``models``: tokenizer, base model, pretraining, the one generation and log-prob helpers
- ``preferences`` (stage 1): pairs, simulated labels; ``trl_format``: TRL's layouts in and
  out; ``label_store`` and ``label_file``: the durable label store; ``widget``: the pairwise
  labeling widget (the only module that needs the course extra, ipywidgets)
- ``reward_model`` (stage 2): the Bradley-Terry reward model, its training and evaluation
- ``ppo`` (stage 3): PPO against a reward model or any reward function
- ``critic_free``: RLOO and GRPO (and Dr. GRPO) on PPO's machinery, a verifiable reward
- ``dpo`` and ``beyond``: DPO, the SFT baseline, best-of-n, reward over-optimisation
- ``pipeline``: every stage headless (``rlhf-lite pipeline``); ``plots``: the shared plots;
  ``callbacks``: logs of every trainer (TensorBoard, JSON Lines, the ``rlhf_lite`` logger)
- ``parallel``: data-parallel runs over several processes (``torchrun``, ``accelerate launch``)
- ``exercises``: the lessons' exercises: ``check`` yours against the package's, then ``use`` it
"""
from .world import CRITERIA, STYLES, Criteria, SimulatedLabeler, World, get_criteria
from .models import (PRESETS, completion_logprobs, generate, get_base_model, load_model,
                     pick_device, save_model, set_threads)
from .preferences import Comparison, make_preference_dataset
from .label_store import LabelStore
from .reward_model import RewardModel, bradley_terry_loss, train_reward_model
from .ppo import PPOConfig, PPOTrainer
