"""``python -m rlhf_lite pipeline --out DIR``: the same as the ``rlhf-lite`` command."""
import sys

from .cli import main

sys.exit(main())
