"""The block registry: spec type names -> Keras layer classes.

One decorator does two jobs (STYLE.md #1): it records a class under its spec type name and
registers it for Keras serialization, so a `.keras` file reloads without custom_objects.
Specs resolve types only through this table; nothing is ever imported from a spec string.
"""

from __future__ import annotations

import difflib
import inspect

import keras

_REGISTRY: dict[str, type] = {}


def register_block(name: str | None = None):
    """Class decorator: make a Keras layer available to specs as `type: name`."""

    def wrap(cls):
        type_name = name or cls.__name__
        if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
            raise ValueError(f"block type '{type_name}' is registered twice")
        keras.saving.register_keras_serializable(package="kzoo", name=cls.__name__)(cls)
        _REGISTRY[type_name] = cls
        return cls

    return wrap


def get_block(type_name: str):
    """The class registered as `type_name`; KeyError with a did-you-mean otherwise."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise KeyError(unknown_type_message(type_name)) from None


def unknown_type_message(type_name: str) -> str:
    close = difflib.get_close_matches(type_name, list(_REGISTRY), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown block type '{type_name}'{hint}; `kzoo list` shows the known types"


def block_types() -> dict[str, type]:
    return dict(sorted(_REGISTRY.items()))


def constructor_args(cls) -> set[str]:
    """Names a block's constructor accepts (besides Keras' own **kwargs)."""
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def summary(cls) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""
