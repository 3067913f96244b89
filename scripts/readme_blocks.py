"""Run every python block of the installed x-transformers README on x-transformers and on x_attn.

The README is the long description in the x-transformers wheel's METADATA. Each block runs in a
subprocess, shrunk to small sizes (model dims, depths, lengths, vocabularies; ``.cuda()``
dropped) and opened by ``import torch; from x_transformers import *`` (the README's fragments
assume the names of earlier blocks), once as written and once with ``x_transformers`` changed
to ``x_attn``.
Prints one line per block: its number, first line, and the result on each library.

    python scripts/readme_blocks.py [--timeout 120] [--only 3,7]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata

SHRINK = [
    (r"\.cuda\(\)", ""),
    (r"\b(8192|4096|2048|1024)\b", "128"),
    (r"\b512\b", "64"),
    (r"\b(20000|50000|10000)\b", "256"),
    (r"depth = \d+", "depth = 2"),
]


def blocks() -> list[str]:
    text = metadata.metadata("x-transformers").get_payload() or ""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def shrink(code: str) -> str:
    code = "import torch\nfrom x_transformers import *\n" + code
    for pattern, repl in SHRINK:
        code = re.sub(pattern, repl, code)
    return code


def run(code: str, timeout: int) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    if done.returncode == 0:
        return "ok"
    lines = done.stderr.strip().splitlines()
    return lines[-1][:160] if lines else f"exit {done.returncode}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--only", default="", help="comma-separated block numbers")
    args = parser.parse_args()
    only = {int(i) for i in args.only.split(",") if i}
    for i, code in enumerate(blocks()):
        if only and i not in only:
            continue
        code = shrink(code)
        theirs = run(code, args.timeout)
        ours = run(re.sub(r"\bx_transformers\b", "x_attn", code), args.timeout)
        first = code.strip().splitlines()[2][:50]
        print(f"{i:3d} | {first:50s} | xt: {theirs} | x_attn: {ours}", flush=True)


if __name__ == "__main__":
    main()
