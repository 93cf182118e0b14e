"""rlhf-lite: RLHF's three stages on a laptop, in a generated world with a known gold judge.

One module a stage:

- ``world``: tasks, the internet corpus, the judge, criteria, simulated labelers
- ``models``: tokenizer, base model, pretraining, generation, log-probs
"""
from .world import CRITERIA, STYLES, Criteria, SimulatedLabeler, World, get_criteria
from .models import (generate, completion_logprobs, get_base_model, load_model, pick_device,
                     save_model)
