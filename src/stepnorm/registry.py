"""The one rule of stepnorm's name registries (transforms, validators): a taken name is refused."""

from __future__ import annotations

from typing import Any, MutableMapping


def add(table: MutableMapping[str, Any], name: str, obj: Any, kind: str) -> Any:
    """Put ``obj`` into ``table`` under ``name``; return ``obj``.

    A name already taken by another definition raises ValueError: overwriting it would silently
    change what existing configs mean (a transform) or drop a check from every gate (a
    validator). The same definition again (same module and qualified name, e.g. a reloaded
    module) replaces itself.
    """
    taken = table.get(name)
    if taken is not None and _origin(taken) != _origin(obj):
        raise ValueError(f"{kind} name {name!r} is already registered by {'.'.join(_origin(taken))}; "
                         f"{'.'.join(_origin(obj))} needs another name")
    table[name] = obj
    return obj


def _origin(obj: Any) -> tuple[str, str]:
    return obj.__module__, obj.__qualname__
