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


def closest(word: str, choices) -> str | None:
    """The likeliest intended choice: a different case or swapped letters first ('MPL' -> 'MLP', not
    'PLE'), then difflib's closest match."""
    choices = list(choices)
    same_letters = [c for c in choices if sorted(c.lower()) == sorted(str(word).lower())]
    if same_letters:
        return same_letters[0]
    close = difflib.get_close_matches(str(word), choices, n=1)
    return close[0] if close else None


def unknown_type_message(type_name: str) -> str:
    match = closest(type_name, _REGISTRY)
    close = [match] if match else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown block type '{type_name}'{hint}; `kzoo list` shows the known types"


def block_types() -> dict[str, type]:
    return dict(sorted(_REGISTRY.items()))


# Keras' own Layer arguments (name, dtype, trainable, ...): the graph builder sets `name`, the rest
# are not spec arguments. A block without an __init__ of its own would otherwise offer them.
_LAYER_ARGS = frozenset(inspect.signature(keras.layers.Layer.__init__).parameters)


def _own_parameters(cls):
    return [(n, p) for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and n not in _LAYER_ARGS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def constructor_args(cls) -> set[str]:
    """Names a block's constructor accepts (besides Keras' own Layer arguments)."""
    return {n for n, _ in _own_parameters(cls)}


def summary(cls) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def arguments(cls) -> list[dict]:
    """A block's spec arguments: [{"name", "type" (annotation text), "default" or absent if required}].

    `features`, which the graph builder fills in for feature blocks, is left out.
    """
    out = []
    for name, p in _own_parameters(cls):
        if name == "features":
            continue
        arg = {"name": name, "type": p.annotation if isinstance(p.annotation, str) else
               getattr(p.annotation, "__name__", "") if p.annotation is not p.empty else ""}
        if p.default is not p.empty:
            arg["default"] = p.default
        out.append(arg)
    return out


def describe(cls) -> str:
    """`kzoo list TYPE`: the docstring's summary, inputs, each argument with type and default, the docstring."""
    first = summary(cls)
    lines = [first if first.startswith(cls.__name__) else f"{cls.__name__}: {first}"]
    if cls.feature_block:
        lines.append("inputs: one feature group ('group:NAME')")
    else:
        lo, hi = cls.arity
        lines.append("inputs: " + (f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}")
                     + " block output(s)")
    lines.append("args:" + ("" if arguments(cls) else " (none)"))
    for arg in arguments(cls):
        default = f" = {arg['default']!r}" if "default" in arg else "  (required)"
        lines.append(f"  {arg['name']}: {arg['type'] or 'any'}{default}")
    doc = inspect.cleandoc(cls.__doc__ or "")
    if doc:
        lines += ["", doc]
    return "\n".join(lines)


def argument_docs(cls) -> dict[str, str]:
    """Each argument's entry in the class docstring's Google-style "Args:" section, continuation
    lines joined: {"dim": "int. Embedding size.", ...}. Arguments it does not document are absent."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return {}
    section = len(lines[start]) - len(lines[start].lstrip())
    docs: dict[str, str] = {}
    entry_indent, current = None, None
    for line in lines[start + 1:]:
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent <= section:
            break
        if entry_indent is None:
            entry_indent = indent
        if indent == entry_indent and ":" in line:
            name, text = line.strip().split(":", 1)
            current = name.split("(")[0].strip()
            docs[current] = text.strip()
        elif current is not None and indent > entry_indent:
            docs[current] = f"{docs[current]} {line.strip()}".strip()
    return docs
