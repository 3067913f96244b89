"""The main job: train a character-level GPT on Shakespeare's plays, then sample from it.

Run: python examples/train_shakespeare.py             (default recipe, < 5 minutes on 2 cores)
     python examples/train_shakespeare.py --help      (every option)

The same command is ``python -m x_attn.train`` or ``x-attn-train`` (see x_attn/train/cli.py).
"""

import sys

from x_attn.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
