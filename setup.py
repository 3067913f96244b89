"""Packaging for x_attn."""

from pathlib import Path

from setuptools import find_packages, setup

_README = Path(__file__).parent / "README.md"
_LONG_DESCRIPTION = _README.read_text(encoding="utf-8") if _README.exists() else ""

setup(
    name="x-attn",
    version="0.1.0",
    description=(
        "Compose transformers from keyword flags (x-transformers compatible API), "
        "fused SDPA by default, every flag checked against a reference"
    ),
    long_description=_LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["x_attn*"]),
    install_requires=["torch>=2.3", "einops>=0.8", "entmax>=1.3", "numpy"],
    extras_require={
        # ruff pinned: a newer release may add lint rules and turn CI red on its own
        "test": ["pytest>=8", "ruff==0.17.6"],
        "examples": ["matplotlib"],
        "bench": ["x-transformers==2.31.*"],
    },
    keywords=["transformers", "attention", "pytorch", "deep learning"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
