"""Print the generated list of x-transformers flags x_attn lacks, for docs/compat.md.

Usage: ``python scripts/compat_doc.py`` from the repository root.
"""

from x_attn.compat import markdown

if __name__ == "__main__":
    print(markdown())
