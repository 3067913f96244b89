"""Shared test set-up: single-threaded torch, hypothesis profiles for the fuzzer.

Tiny tensors run fastest single-threaded (and robustly on 2 busy cores).

Hypothesis profiles (tests/test_fuzz.py): ``ci`` runs by default, derandomized so CI is
deterministic (about 200 draws over the fuzz tests); ``thorough`` runs with
``pytest -m thorough`` (about 1000 draws per fuzz test, random seeds). No deadline: draws
differ a lot in cost.
"""

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

_COMMON = dict(
    deadline=None,
    print_blob=True,
    # known-open bugs discard whole draws (tests/test_fuzz.py: checkable)
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
