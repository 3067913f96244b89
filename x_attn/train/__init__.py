"""Training a character-level GPT (the main job): recipes, loop, command line.

``python -m x_attn.train`` trains the default recipe on Shakespeare's plays; see
:mod:`x_attn.train.cli` for the options.
"""

from x_attn.train.cli import main
from x_attn.train.loop import History, evaluate, train
from x_attn.train.recipes import RECIPES, Recipe, build_model

__all__ = ["RECIPES", "History", "Recipe", "build_model", "evaluate", "main", "train"]
