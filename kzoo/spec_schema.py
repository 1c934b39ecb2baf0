"""The spec's JSON Schema: the shipped kzoo/schema.json completed from the block and task registries,
and its validation errors turned into `(json path, message)` problems in the words users read.

    schema()               -> the completed schema (`kzoo schema` prints it; editors complete from it)
    schema_problems(raw)   -> problems of a raw spec against it
    json_path, did_you_mean   the path and hint formatting every spec message uses
"""

from __future__ import annotations

import json
from importlib import resources

import jsonschema

from kzoo.tasks import task_types


def schema() -> dict:
    """The shipped JSON Schema (kzoo/schema.json) completed from the registries: block `type` is
    an enum of the registered block types, each with an `if type == T then args {...}` entry in
    `$defs.block.allOf` listing T's constructor arguments (JSON type, default, description,
    required ones); task `type` is an enum of the registered task types. `kzoo schema` prints it
    and `check` validates against it."""
    from kzoo.blocks.registry import block_types

    out = json.loads(resources.files("kzoo").joinpath("schema.json").read_text())
    block = out["$defs"]["block"]
    types = block_types()
    block["properties"]["type"]["enum"] = list(types)
    block["allOf"] = [_block_args_rule(name, cls) for name, cls in types.items()]
    task_type = out["$defs"]["task"]["properties"]["type"]
    task_type["enum"] = list(task_types())
    return out


MAX_BLOCK_INT = 65536

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string",
               "list": "array", "tuple": "array", "dict": "object", "None": "null"}


def _json_type(annotation: str):
    """The JSON Schema `type` of an annotation's text (`int | None` -> ["integer", "null"]);
    None when some part is not a plain JSON type (then the value is left unconstrained)."""
    if not annotation:
        return None
    out = []
    for part in annotation.split("|"):
        t = _JSON_TYPES.get(part.strip().split("[")[0])
        if t is None:
            return None
        if t not in out:
            out.append(t)
    return out[0] if len(out) == 1 else out


def _block_args_rule(type_name: str, cls) -> dict:
    """`if type == type_name then args` has exactly the constructor's arguments, typed."""
    from kzoo.blocks.registry import argument_docs, arguments

    docs = argument_docs(cls)
    props, required = {}, []
    for arg in arguments(cls):
        prop = {}
        t = _json_type(arg["type"])
        if t is not None:
            prop["type"] = t
            # Widths, counts and sizes: a bound far above any real layer, so that a typo (1e9
            # units) is a spec error rather than an allocation that takes the machine down.
            if "integer" in (t if isinstance(t, list) else [t]):
                prop["maximum"] = MAX_BLOCK_INT
            if "array" in (t if isinstance(t, list) else [t]):
                prop["items"] = {"maximum": MAX_BLOCK_INT}
            if "object" in (t if isinstance(t, list) else [t]):  # e.g. MTMD's {task: embedding size}
                prop["additionalProperties"] = {"maximum": MAX_BLOCK_INT}
        if "default" in arg:
            try:
                json.dumps(arg["default"], allow_nan=False)
                prop["default"] = arg["default"]
            except (TypeError, ValueError):
                pass
        else:
            required.append(arg["name"])
        if arg["name"] in docs:
            prop["description"] = docs[arg["name"]]
        props[arg["name"]] = prop
    args = {"additionalProperties": False, "properties": props}  # the base `args` says "type": "object"
    then = {"properties": {"args": args}}
    if required:
        args["required"] = required
        then["required"] = ["args"]
    return {"if": {"properties": {"type": {"const": type_name}}, "required": ["type"]}, "then": then}


def json_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def did_you_mean(word: str, choices) -> str:
    from kzoo.blocks.registry import closest

    match = closest(word, choices)
    return f" (did you mean '{match}'?)" if match else ""


def schema_problems(raw: dict) -> list[tuple[str, str]]:
    """Problems found by validating against `schema()`, each with its JSON path.

    An unknown block type or block argument is reported in `check`'s own words (did-you-mean,
    the arguments a type takes). When they are the only schema problems, none is returned, so
    that `check` reports them together with the semantic problems (undefined inputs, ...)."""
    validator = jsonschema.Draft202012Validator(schema())
    problems = []  # (path, message, also reported by check's semantic pass)
    for err in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        # For oneOf/anyOf, the most specific sub-error names the real mistake.
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        while best.context:
            best = jsonschema.exceptions.best_match(best.context)
        mapped = _block_problems(raw, best)
        if mapped is not None:
            problems.extend(mapped)
            continue
        path = json_path(best.absolute_path)
        msg = best.message
        if best.validator == "additionalProperties":
            allowed = best.schema.get("properties", {})
            extra = [k for k in best.instance if k not in allowed]
            msg = "; ".join(f"unknown key '{k}'{did_you_mean(k, allowed)}" for k in extra)
        elif best.validator == "enum":
            msg = f"{best.instance!r} is not one of {best.validator_value}{did_you_mean(str(best.instance), map(str, best.validator_value))}"
        problems.append((path, msg, False))
    if all(semantic for _, _, semantic in problems):
        return []
    return [(path, msg) for path, msg, _ in problems]


def _block_problems(raw: dict, err) -> list[tuple[str, str, bool]] | None:
    """A schema error about a block's `type` or `args`, in the words `check` uses; None for others.

    The flag marks the problems `check`'s semantic pass reports itself (unknown type, unknown arg).
    """
    where = list(err.absolute_path)
    if len(where) < 2 or where[0] != "blocks" or not isinstance(where[1], int):
        return None
    from kzoo.blocks.registry import unknown_type_message

    block = raw["blocks"][where[1]]
    kind = block.get("type") if isinstance(block, dict) else None
    path = json_path(where)
    if where[2:] == ["type"] and err.validator == "enum":
        # A non-string type is also a `type` error, which says so; the enum adds nothing.
        return [(path, unknown_type_message(err.instance), True)] if isinstance(err.instance, str) else []
    if where[2:] == ["args"] and err.validator == "additionalProperties":
        allowed = err.schema.get("properties", {})
        return [(f"{path}.{k}", f"{kind} has no argument '{k}'{did_you_mean(k, allowed)}; it takes {sorted(allowed)}",
                 True) for k in err.instance if k not in allowed]
    if where[2:] == ["args"] and err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return [(path, f"{kind} needs argument(s) {missing}; `kzoo list {kind}` describes them", False)]
    if where[2:] == [] and err.validator == "required" and "args" in err.validator_value and "args" not in block:
        needed = err.schema["properties"]["args"].get("required", [])
        return [(f"{path}.args", f"{kind} needs 'args' with {needed}; `kzoo list {kind}` describes them", False)]
    return None
