"""JSON Schemas of the config and of the stats artifact, checked with ``jsonschema``.

The schemas (``config.schema.json``, ``stats.schema.json`` next to this file) state the structure
and types; they are shipped with the package so editors and consumers can use them too. Rules that
relate fields to each other or to the data (mask lengths, shapes against the horizon, dims against
the dataset's widths, finite weights, checksums) stay in ``stepnorm.config`` / ``stepnorm.artifact``.

``check`` turns the first violation into one line: the dotted path of the offending value and what
it must be (a schema node's ``x-message``, else a sentence built from the failed keyword).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
import referencing

SCHEMAS = ("config", "stats")


@functools.lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """The parsed schema ``name`` (one of ``SCHEMAS``)."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown schema {name!r} (have {', '.join(SCHEMAS)})")
    return json.loads(resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8"))


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.protocols.Validator:
    # The schemas refer to each other by file name (stats.json records its config).
    registry = referencing.Registry().with_resources(
        (schema(other)["$id"], referencing.Resource.from_contents(schema(other))) for other in SCHEMAS
    )
    doc = schema(name)
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc, registry=registry)


def first_problem(doc: Any, name: str) -> str | None:
    """The first violation of schema ``name`` in ``doc`` as ``"<path> <problem>"``, or None.

    "First" is deterministic: the violation at the earliest path in document order (keys in the
    order the document gives them), so the same document always gets the same message.
    """
    errors = list(_validator(name).iter_errors(doc))
    if not errors:
        return None
    # An anyOf failure is one error at its node, reported with the node's own message.
    return _describe(min(errors, key=lambda e: _order(doc, e.absolute_path)))


def _order(doc: Any, path) -> tuple:
    """A sort key placing ``path`` in document order (a mapping's keys in the order given)."""
    key, node = [], doc
    for part in path:
        if isinstance(node, dict):
            keys = list(node)
            key.append(keys.index(part) if part in node else len(keys))
            node = node.get(part)
        else:
            key.append(part)
            node = node[part] if isinstance(node, list) and part < len(node) else None
    return tuple(key)


def dotted(path) -> str:
    """``["datasets", 0, "weight"]`` -> ``datasets[0].weight``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: jsonschema.ValidationError) -> str:
    where = dotted(error.absolute_path)
    keyword, node = error.validator, error.schema
    if keyword == "additionalProperties":
        allowed = sorted(node.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if where else ""
        return f"unknown key {prefix}{unknown[0]} (allowed: {', '.join(allowed)})"
    if keyword == "required":
        missing = next(k for k in node["required"] if k not in error.instance)
        return f"{where or 'the document'} is missing required key {missing!r}"
    label = where or "the document"
    if keyword == "enum":
        choices = ", ".join(_show(v) for v in node["enum"])
        return f"{label} must be one of {choices}, got {error.instance!r}" if "x-message" not in node \
            else f"{label} {node['x-message']}, got {error.instance!r}"
    if keyword == "const":
        return f"{label} must be {node['const']!r}, got {error.instance!r}"
    if keyword == "maximum":
        return f"{label} must be at most {node['maximum']}, got {error.instance!r}"
    message = node.get("x-message") or _SENTENCES.get(keyword, error.message)
    return f"{label} {message}, got {error.instance!r}"


_SENTENCES = {"type": "has the wrong type", "minimum": "is too small", "exclusiveMinimum": "is too small",
              "minItems": "must not be empty", "minLength": "must not be empty", "minProperties": "must not be empty"}


def _show(value: Any) -> str:
    """A choice as the YAML/JSON a user writes (``true``, not ``True``)."""
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)
