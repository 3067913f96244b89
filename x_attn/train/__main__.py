"""``python -m x_attn.train``: see :mod:`x_attn.train.cli`."""

import sys

from x_attn.train.cli import main

sys.exit(main())
