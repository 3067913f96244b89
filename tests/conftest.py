"""Shared test set-up: tiny tensors run fastest single-threaded (and robustly on 2 busy cores)."""

import torch

torch.set_num_threads(1)
