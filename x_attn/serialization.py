"""Model configs as plain, JSON-friendly dicts, and models rebuilt from them.

Every public model class records the keyword arguments it was built with.
``to_config(model)`` returns them as nested dicts (sub-models such as ``attn_layers``
included), and ``from_config(config)`` builds the same architecture again. A checkpoint is then
``{"config": to_config(model), "state_dict": model.state_dict()}``; every such class also gets
``model.save(path)`` (:mod:`x_attn.checkpoint`), which stores exactly that without pickle.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

from x_attn.per_layer import PerLayer

_REGISTRY: dict[str, type] = {}


def records_config(cls: type) -> type:
    """Class decorator: the instance remembers its constructor arguments (``_config_kwargs``)."""
    init = cls.__init__
    signature = inspect.signature(init)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if not takes_any:  # x-transformers flags at no-op values, dropped by the constructor
            kwargs = {k: v for k, v in kwargs.items() if k in signature.parameters}
        bound = signature.bind(self, *args, **kwargs).arguments
        recorded: dict[str, Any] = {}
        for name, value in list(bound.items())[1:]:
            kind = signature.parameters[name].kind
            recorded.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
        self._config_kwargs = recorded  # the outermost decorated class records last

    cls.__init__ = wrapper
    if "save" not in cls.__dict__ and not hasattr(cls, "save"):
        cls.save = _save_method
    _REGISTRY[cls.__name__] = cls
    return cls


def _save_method(self: nn.Module, path: Any, metadata: dict[str, Any] | None = None) -> Any:
    """Write this model to the folder ``path``: safetensors weights + JSON config.

    Reload it with ``x_attn.load(path)``; see :mod:`x_attn.checkpoint`.
    """
    from x_attn.checkpoint import save

    return save(self, path, metadata)


def to_config(model: nn.Module) -> dict[str, Any]:
    """``{"type": class name, "kwargs": {...}}`` with sub-models as nested configs."""
    if not hasattr(model, "_config_kwargs"):
        raise TypeError(
            f"to_config: {type(model).__name__} is not an x_attn model class; pass a "
            "TransformerWrapper, an AttentionLayers stack or another x_attn wrapper"
        )
    kwargs = {name: _encode(value) for name, value in model._config_kwargs.items()}
    return {"type": type(model).__name__, "kwargs": kwargs}


def from_config(config: dict[str, Any]) -> nn.Module:
    """Build the model described by ``to_config``'s output (weights are fresh)."""
    if not isinstance(config, dict) or set(config) != {"type", "kwargs"}:
        raise ValueError("from_config: expected a dict with exactly the keys 'type' and 'kwargs'")
    cls = _REGISTRY.get(config["type"])
    if cls is None:
        raise ValueError(
            f"from_config: unknown model type {config['type']!r}; known: {sorted(_REGISTRY)}"
        )
    return cls(**{name: _decode(value) for name, value in config["kwargs"].items()})


def _encode(value: Any) -> Any:
    if _is_torch_activation(value):  # e.g. ff_custom_activation=nn.Sigmoid()
        return {"torch.nn": type(value).__name__}
    arguments = _activation_arguments(value)
    if arguments is not None:  # e.g. nn.GELU(approximate="tanh")
        return {"torch.nn": type(value).__name__, "kwargs": arguments}
    if isinstance(value, nn.Module) and not hasattr(value, "_config_kwargs"):
        raise TypeError(
            f"to_config: cannot store the module {value!r}: only x_attn models and torch.nn "
            "activations rebuilt from their plain constructor arguments have a config; build "
            "the model in code and load its state_dict instead"
        )
    if isinstance(value, nn.Module):
        return {"model": to_config(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, PerLayer):
        return {"per_layer": [_encode(v) for v in value.values]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}  # e.g. embed_num_tokens
    if isinstance(value, dict) or not _is_plain(value):
        raise TypeError(
            f"to_config: cannot store a constructor argument of type {type(value).__name__}"
        )
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"model"}:
        return from_config(value["model"])
    if isinstance(value, dict) and set(value) in ({"torch.nn"}, {"torch.nn", "kwargs"}):
        cls = getattr(nn, value["torch.nn"], None)
        if cls is None or not _is_torch_activation(cls()):
            raise ValueError(f"from_config: {value['torch.nn']!r} is not a torch.nn activation")
        return cls(**value.get("kwargs", {}))
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_decode(v) for v in value["tuple"])
    if isinstance(value, dict) and set(value) == {"per_layer"}:
        return PerLayer(tuple(_decode(v) for v in value["per_layer"]))
    if isinstance(value, dict) and set(value) == {"dict"}:
        return {k: _decode(v) for k, v in value["dict"].items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _is_torch_activation(value: Any) -> bool:
    """A torch.nn activation module equal to one built with default arguments."""
    cls = type(value)
    if not isinstance(value, nn.Module) or cls.__module__ != "torch.nn.modules.activation":
        return False
    try:
        return repr(cls()) == repr(value)
    except TypeError:  # needs constructor arguments
        return False


def _activation_arguments(value: Any) -> dict[str, Any] | None:
    """The constructor arguments of a torch.nn activation built with plain, non-default ones
    (its ``__constants__``), when rebuilding it from them gives the same module; else None."""
    cls = type(value)
    if not isinstance(value, nn.Module) or cls.__module__ != "torch.nn.modules.activation":
        return None
    names = getattr(cls, "__constants__", [])
    arguments = {name: getattr(value, name, None) for name in names}
    if not all(_is_plain(v) for v in arguments.values()):
        return None
    try:
        same = repr(cls(**arguments)) == repr(value)
    except TypeError:
        return None
    return arguments if same else None


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
