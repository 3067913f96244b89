"""Checkpoints without pickle: weights in safetensors, the architecture as JSON.

``model.save(path)`` writes a folder with two files:

* ``config.json``: the model's constructor arguments (:func:`x_attn.to_config`), its dtype, the
  x_attn version and any user metadata (e.g. a tokenizer's vocabulary);
* ``model.safetensors``: the tensors of ``model.state_dict()``.

``x_attn.load(path)`` rebuilds the model from the JSON and loads the tensors. Nothing is ever
unpickled, because unpickling a file can run arbitrary code: a ``torch.save`` / pickle file is
refused with that reason instead of being opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from x_attn.serialization import from_config, to_config

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load", "load_metadata", "save"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "x_attn-checkpoint"
FORMAT_VERSION = 1

_PICKLE_REASON = (
    "it is a {kind}, and x_attn never unpickles files because unpickling can run arbitrary "
    "code; save models with model.save(path), which writes safetensors weights and a JSON config"
)


def save(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the folder ``path`` (created if needed); returns the folder.

    ``metadata`` must be JSON-serialisable; :func:`load_metadata` returns it.
    """
    from safetensors.torch import save_model

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save: {folder} exists and is not a folder; choose a folder path")
    dtypes = {p.dtype for p in model.parameters()} or {torch.float32}
    if len(dtypes) > 1:
        raise ValueError(f"save: the model mixes parameter dtypes {sorted(map(str, dtypes))}")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "x_attn_version": _version(),
        "dtype": str(dtypes.pop()).removeprefix("torch."),
        "model": to_config(model),
        "metadata": metadata or {},
    }
    text = json.dumps(config, indent=2)  # fails before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return folder


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model saved in ``path`` (a checkpoint folder or a file in it), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    folder = _checkpoint_folder(Path(path))
    config = _read_config(folder)
    model = from_config(config["model"]).to(dtype=getattr(torch, config["dtype"]))
    weights = folder / WEIGHTS_NAME
    _refuse_pickle(weights)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    except SafetensorError as error:
        raise ValueError(f"load: {weights} is not a valid safetensors file ({error})") from None
    if missing or unexpected:
        raise ValueError(
            f"load: {weights} does not match the architecture in {CONFIG_NAME} "
            f"(missing: {sorted(missing)}, unexpected: {sorted(unexpected)})"
        )
    return model.to(device).eval()


def load_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata`` dict stored by :func:`save`."""
    return _read_config(_checkpoint_folder(Path(path)))["metadata"]


def _checkpoint_folder(path: Path) -> Path:
    if path.is_file():
        _refuse_pickle(path)
        if path.name not in (CONFIG_NAME, WEIGHTS_NAME):
            raise ValueError(
                f"load: {path} is not an x_attn checkpoint; pass the folder written by "
                f"model.save(path), which holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        path = path.parent
    if not path.is_dir():
        raise ValueError(f"load: no checkpoint at {path}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ValueError(f"load: {path} is not an x_attn checkpoint: {name} is missing")
    return path


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    _refuse_pickle(file)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"load: {file} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"load: {file} is not an x_attn checkpoint config (no format {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"load: {file} has format version {config.get('format_version')!r}; this x_attn "
            f"reads version {FORMAT_VERSION}"
        )
    return config


def _refuse_pickle(file: Path) -> None:
    """ValueError when ``file`` is a pickle or a torch.save archive (which holds a pickle)."""
    with open(file, "rb") as handle:
        head = handle.read(9)
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return  # (its first byte may be anything, 0x80 or "P" included)
    if head[:2] == b"PK":
        kind = "zip archive, the format of torch.save (its data.pkl is a pickle)"
    elif head[:1] == b"\x80":
        kind = "pickle file"
    else:
        return
    raise ValueError(f"load: refusing {file}: " + _PICKLE_REASON.format(kind=kind))


def _version() -> str:
    from x_attn import __version__

    return __version__
