"""Run every python block of the installed x-transformers README on x-transformers and on x_attn.

The README is the long description in the x-transformers wheel's METADATA. The blocks are
shrunk to small sizes (model dims, lengths, vocabularies; ``.cuda()`` dropped) and run
one after the other in one process per library, each in a fresh namespace opened by
``import torch; from x_transformers import *`` (the README's fragments assume the names of
earlier blocks), once as written and once with ``x_transformers`` changed to ``x_attn``.
Prints one line per block: its number, first line, and the result on each library.

    python scripts/readme_blocks.py [--timeout 120] [--only 3,7]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
from importlib import metadata

SHRINK = [
    (r"\.cuda\(\)", ""),
    (r"\b(8192|4096|2048|1024)\b", "128"),
    (r"\b512\b", "64"),
    (r"\b(20000|50000|10000)\b", "256"),
]
PRELUDE = "import torch\nfrom x_transformers import *\n"


def blocks() -> list[str]:
    text = metadata.metadata("x-transformers").get_payload() or ""
    found = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    out = []
    for code in found:
        for pattern, repl in SHRINK:
            code = re.sub(pattern, repl, code)
        out.append(code)
    return out


def _alarm(signum, frame):
    raise TimeoutError("timeout")


def worker(library: str, timeout: int, only: set[int]) -> None:
    """Run the blocks with ``library`` in place of x_transformers; one JSON line per block."""
    signal.signal(signal.SIGALRM, _alarm)
    for i, code in enumerate(blocks()):
        if only and i not in only:
            continue
        code = re.sub(r"\bx_transformers\b", library, PRELUDE + code)
        signal.alarm(timeout)
        try:
            exec(compile(code, f"block{i}", "exec"), {"__name__": f"block{i}"})
            result = "ok"
        except BaseException as error:  # noqa: BLE001 - every failure is a result here
            result = (
                f"{type(error).__name__}: {str(error).splitlines()[0][:150] if str(error) else ''}"
            )
        finally:
            signal.alarm(0)
        print(json.dumps([i, result]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--only", default="", help="comma-separated block numbers")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = {int(i) for i in args.only.split(",") if i}
    if args.worker:
        return worker(args.worker, args.timeout, only)
    results = {}
    for library in ("x_transformers", "x_attn"):
        cmd = [sys.executable, __file__, "--worker", library, "--timeout", str(args.timeout)]
        cmd += ["--only", args.only] if args.only else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        for line in done.stdout.splitlines():
            if line.startswith("["):
                i, result = json.loads(line)
                results.setdefault(i, {})[library] = result
    codes = blocks()
    for i in sorted(results):
        first = codes[i].strip().splitlines()[0][:40] if codes[i].strip() else ""
        got = results[i]
        print(
            f"{i:3d} | {first:40s} | xt: {got.get('x_transformers')} | x_attn: {got.get('x_attn')}"
        )


if __name__ == "__main__":
    main()
