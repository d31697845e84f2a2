"""Dataclass results <-> JSON, and the JSON schema generated from the same classes (one source of truth).

`to_json` writes NaN / inf as null (strict JSON), `from_json` rebuilds the typed object from a metrics.json
section, `json_schema` describes a class with each field's doc as its description.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

import numpy as np


def json_key(f: dataclasses.Field) -> str:
    """A field's key in JSON: its name, or metadata["json"] where the key is no Python name (frac_surface_ge_0.5)."""
    return f.metadata.get("json", f.name)


def to_json(obj: Any) -> Any:
    """Plain JSON values: dataclasses to dicts (field order kept; a None field marked omit_none is left out), tensors /
    arrays to lists, NaN / inf to None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {json_key(f): to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_json(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _args(tp) -> tuple:
    return typing.get_args(tp)


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in _args(tp)


def _strip_optional(tp):
    rest = [a for a in _args(tp) if a is not type(None)]
    return rest[0] if len(rest) == 1 else Union[tuple(rest)]


def from_json(tp, data: Any, where: str = "") -> Any:
    """Rebuild a value of type `tp` (a results dataclass, list / dict / Optional of them, or a plain type)."""
    if _is_optional(tp):
        return None if data is None else from_json(_strip_optional(tp), data, where)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"{where or tp.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            key = json_key(f)
            if key in data:
                kwargs[f.name] = from_json(hints[f.name], data[key], f"{where}.{key}" if where else key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where or tp.__name__}: missing field {f.name!r}")
        return tp(**kwargs)
    if origin is list:
        (item,) = _args(tp)
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {type(data).__name__}")
        return [from_json(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        _, val = _args(tp)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        return {k: from_json(val, v, f"{where}.{k}") for k, v in data.items()}
    if tp is float:
        if data is None:
            return float("nan")
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise ValueError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if tp in (int, str, bool) and not isinstance(data, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {data!r}")
    return data


_PLAIN = {float: {"type": ["number", "null"]}, int: {"type": "integer"}, str: {"type": "string"}, bool: {"type": "boolean"}}


def json_schema(tp, defs: dict | None = None) -> dict:
    """JSON schema (draft 2020-12) of a results type; dataclasses become $defs with per-field descriptions."""
    top = defs is None
    defs = {} if top else defs
    if _is_optional(tp):
        inner = json_schema(_strip_optional(tp), defs)
        out = {"anyOf": [inner, {"type": "null"}]}
    elif dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            hints = typing.get_type_hints(tp)
            props, required = {}, []
            for f in dataclasses.fields(tp):
                p = dict(json_schema(hints[f.name], defs))
                if f.metadata.get("doc"):
                    p["description"] = f.metadata["doc"]
                props[json_key(f)] = p
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    required.append(json_key(f))
            defs[name] = {"type": "object", "description": " ".join((tp.__doc__ or "").split()),
                          "properties": props, "required": required}
        out = {"$ref": f"#/$defs/{name}"}
    elif typing.get_origin(tp) is list:
        out = {"type": "array", "items": json_schema(_args(tp)[0], defs)}
    elif typing.get_origin(tp) is dict:
        out = {"type": "object", "additionalProperties": json_schema(_args(tp)[1], defs)}
    elif tp in _PLAIN:
        out = dict(_PLAIN[tp])
    else:
        raise TypeError(f"no JSON schema for {tp!r}")
    if top:
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", **out, "$defs": defs}
    return out
