"""Named standardization transforms applied to episodes before statistics are computed.

Each transform is a small class with one job, registered by name, built from a config spec::

    transforms:
      - {name: select_dims, args: {key: action, dims: [0, 1, 2, 3, 4, 5, 7]}}
      - {name: invert_gripper, args: {dim: 6, low: 0.0, high: 1.0}}

Shape changes (``select_dims``, ``insert_constant``, ``quat_to_euler``) let a dataset reach the
mixture's common action layout, as Octo's per-dataset standardization functions do.

Transforms are pure: they return a new ``Episode`` and never modify the arrays they are given.
They keep the array dtype (float32 stays float32) and pass NaN through unchanged, so the
non-finite check downstream still sees it. A transform's identity (name, arguments with
defaults filled in, and a hash of its source code) goes into the dataset fingerprint, so
editing a transform invalidates cached statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import numbers
from typing import Any, ClassVar

import numpy as np

from stepnorm import registry
from stepnorm.errors import ConfigError
from stepnorm.sources.base import Episode

TRANSFORMS: dict[str, type[Transform]] = {}


def register(cls: type[Transform]) -> type[Transform]:
    """Class decorator: make a transform available to configs under ``cls.name``.

    A name already taken by another transform is refused: overwriting it would silently change
    what existing configs (and their cached statistics) mean. Registering the same definition
    again (the same module and class name, e.g. a reloaded module) replaces it.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"transform {cls.__module__}.{cls.__qualname__} has no name (set the class attribute `name`)")
    return registry.add(TRANSFORMS, name, cls, "transform")


class Transform:
    """Base class. Subclasses set ``name`` and ``params`` and implement ``apply``.

    ``params`` maps each argument to its default; ``REQUIRED`` marks arguments without one.
    Subclasses validate argument values in ``check_args`` (raise ``ValueError`` with the problem)
    and store them normalized (ints as ``int``, numbers as ``float``), so ``1`` and ``1.0`` give
    the same identity.
    """

    REQUIRED: ClassVar[object] = object()
    name: ClassVar[str]
    params: ClassVar[dict[str, Any]]

    def __init__(self, args: dict[str, Any], where: str | None = None):
        self.where = where
        unknown = sorted(set(args) - set(self.params))
        if unknown:
            raise self._error(
                f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(self.params)}"
            )
        missing = [k for k, v in self.params.items() if v is self.REQUIRED and k not in args]
        if missing:
            raise self._error(f"missing required argument(s) {', '.join(missing)}")
        self.args = {k: args.get(k, default) for k, default in self.params.items()}
        try:
            self.check_args()
        except ValueError as exc:
            raise self._error(str(exc)) from exc

    def check_args(self) -> None:
        """Validate ``self.args``; raise ``ValueError`` describing the first problem."""

    def apply(self, episode: Episode) -> Episode:
        """Return the transformed episode."""
        raise NotImplementedError

    def _error(self, problem: str) -> ConfigError:
        return ConfigError(self.where, f"transform {self.name!r}: {problem}")

    def _key(self) -> str:
        key = self.args["key"]
        if key not in ("action", "state"):
            raise ValueError(f"key must be 'action' or 'state', got {key!r}")
        return key

    def _array(self, episode: Episode) -> np.ndarray:
        """The ``[T, D]`` array this transform acts on."""
        array = getattr(episode, self.args["key"])
        if array is None:
            raise self._error(
                f"{episode.source}: the dataset has no {self.args['key']} key configured"
            )
        return array

    def _column(self, array: np.ndarray, dim: int, episode: Episode) -> int:
        """``dim`` as a non-negative column index of ``array`` (negative counts from the end)."""
        width = array.shape[1]
        if not -width <= dim < width:
            raise self._error(
                f"{episode.source}: dim {dim} is out of range "
                f"for {self.args['key']} with {width} dims"
            )
        return dim % width

    @staticmethod
    def _int(value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{what} must be an integer, got {value!r}")
        return int(value)

    @staticmethod
    def _number(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{what} must be a number, got {value!r}")
        return float(value)

    def _dims(self) -> list[int]:
        dims = self.args["dims"]
        if not isinstance(dims, (list, tuple)) or not dims:
            raise ValueError(f"dims must be a non-empty list of integers, got {dims!r}")
        dims = [self._int(d, "each of dims") for d in dims]
        if len(set(dims)) != len(dims):
            raise ValueError(f"dims has repeated entries: {dims}")
        return dims

    @staticmethod
    def _replace(episode: Episode, key: str, array: np.ndarray) -> Episode:
        return dataclasses.replace(episode, **{key: array})


@register
class SelectDims(Transform):
    """Keep and reorder dims: ``out[:, i] = x[:, dims[i]]``, ``[T, D] -> [T, len(dims)]``."""

    name = "select_dims"
    params = {"key": Transform.REQUIRED, "dims": Transform.REQUIRED}

    def check_args(self) -> None:
        self._key()
        self.args["dims"] = self._dims()

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        columns = [self._column(x, d, episode) for d in self.args["dims"]]
        return self._replace(episode, self.args["key"], x[:, columns])


@register
class BinarizeGripper(Transform):
    """Snap a gripper dim to two levels: ``high`` where ``x > threshold``, else ``low``."""

    name = "binarize_gripper"
    params = {
        "key": "action",
        "dim": Transform.REQUIRED,
        "threshold": Transform.REQUIRED,
        "low": 0.0,
        "high": 1.0,
    }

    def check_args(self) -> None:
        self._key()
        self.args["dim"] = self._int(self.args["dim"], "dim")
        for arg in ("threshold", "low", "high"):
            self.args[arg] = self._number(self.args[arg], arg)

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        column = self._column(x, self.args["dim"], episode)
        out = x.copy()
        g = x[:, column]
        snapped = np.where(g > self.args["threshold"], self.args["high"], self.args["low"])
        out[:, column] = np.where(np.isnan(g), g, snapped)
        return self._replace(episode, self.args["key"], out)


@register
class InvertGripper(Transform):
    """Flip a gripper dim's convention (e.g. 1 = open becomes 1 = closed): ``low + high - x``."""

    name = "invert_gripper"
    params = {"key": "action", "dim": Transform.REQUIRED, "low": 0.0, "high": 1.0}

    def check_args(self) -> None:
        self._key()
        self.args["dim"] = self._int(self.args["dim"], "dim")
        for arg in ("low", "high"):
            self.args[arg] = self._number(self.args[arg], arg)

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        column = self._column(x, self.args["dim"], episode)
        out = x.copy()
        out[:, column] = self.args["low"] + self.args["high"] - x[:, column]
        return self._replace(episode, self.args["key"], out)


@register
class RelativeToAbsoluteGripper(Transform):
    """Turn relative gripper commands into absolute gripper positions.

    ``g_t = clip(g_{t-1} + r_t, low, high)`` with ``g_{-1} = start``: a running sum that
    saturates at every step, as a physical gripper does. Clipping only the final cumulative sum
    would be wrong as soon as a command is redundant (closing an already closed gripper would
    "bank" travel that a later open command then fails to undo). The recurrence is evaluated
    without a loop over steps: each step is the map ``x -> clip(x + a, lo, hi)``, such maps
    compose into maps of the same form, and a doubling prefix scan composes them in
    ``ceil(log2 T)`` vectorized passes.
    """

    name = "relative_to_absolute_gripper"
    params = {"key": "action", "dim": Transform.REQUIRED, "start": 1.0, "low": 0.0, "high": 1.0}

    def check_args(self) -> None:
        self._key()
        self.args["dim"] = self._int(self.args["dim"], "dim")
        for arg in ("start", "low", "high"):
            self.args[arg] = self._number(self.args[arg], arg)
        if self.args["low"] > self.args["high"]:
            raise ValueError(f"low ({self.args['low']}) must not exceed high ({self.args['high']})")

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        column = self._column(x, self.args["dim"], episode)
        out = x.copy()
        out[:, column] = self.saturating_cumsum(
            x[:, column].astype(np.float64), self.args["start"], self.args["low"], self.args["high"]
        )
        return self._replace(episode, self.args["key"], out)

    @staticmethod
    def saturating_cumsum(steps: np.ndarray, start: float, low: float, high: float) -> np.ndarray:
        """``[T]`` positions ``g_t = clip(g_{t-1} + steps[t], low, high)``, ``g_{-1} = start``."""
        # Prefix t is the map x -> clip(x + shift[t], lo[t], hi[t]) (lo <= hi always holds).
        shift = steps.copy()
        lo = np.full_like(shift, low)
        hi = np.full_like(shift, high)
        span = 1
        while span < len(shift):
            # Compose "prefix ending at t - span" (applied first) with "the span steps up to t".
            a, b, c = shift[:-span], lo[:-span], hi[:-span]
            later_shift, later_lo, later_hi = shift[span:], lo[span:], hi[span:]
            shift[span:], lo[span:], hi[span:] = (
                a + later_shift,
                np.clip(b + later_shift, later_lo, later_hi),
                np.clip(c + later_shift, later_lo, later_hi),
            )
            span *= 2
        return np.clip(start + shift, lo, hi)


@register
class Scale(Transform):
    """Multiply dims by a factor (one number, or one per dim), e.g. to convert units."""

    name = "scale"
    params = {"key": Transform.REQUIRED, "dims": Transform.REQUIRED, "factor": Transform.REQUIRED}

    def check_args(self) -> None:
        self._key()
        self.args["dims"] = self._dims()
        factor = self.args["factor"]
        if isinstance(factor, (list, tuple)):
            if len(factor) != len(self.args["dims"]):
                raise ValueError(
                    f"factor has {len(factor)} entries but dims has {len(self.args['dims'])}"
                )
            self.args["factor"] = [self._number(f, "each factor") for f in factor]
        else:
            self.args["factor"] = self._number(factor, "factor")

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        columns = [self._column(x, d, episode) for d in self.args["dims"]]
        out = x.copy()
        out[:, columns] = x[:, columns] * np.asarray(self.args["factor"], dtype=x.dtype)
        return self._replace(episode, self.args["key"], out)


@register
class Clip(Transform):
    """Clip dims to ``[low, high]`` (e.g. a gripper command recorded slightly outside 0..1)."""

    name = "clip"
    params = {"key": "action", "dims": Transform.REQUIRED, "low": Transform.REQUIRED, "high": Transform.REQUIRED}

    def check_args(self) -> None:
        self._key()
        self.args["dims"] = self._dims()
        for arg in ("low", "high"):
            self.args[arg] = self._number(self.args[arg], arg)
        if self.args["low"] > self.args["high"]:
            raise ValueError(f"low ({self.args['low']}) must not exceed high ({self.args['high']})")

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        columns = [self._column(x, d, episode) for d in self.args["dims"]]
        out = x.copy()
        out[:, columns] = np.clip(x[:, columns], self.args["low"], self.args["high"])  # NaN stays NaN
        return self._replace(episode, self.args["key"], out)


@register
class InsertConstant(Transform):
    """Insert ``count`` constant dims before dim ``at`` (``at`` = D appends), e.g. zero rotation
    deltas for a robot that only commands translation: ``[T, D] -> [T, D + count]``."""

    name = "insert_constant"
    params = {"key": "action", "at": Transform.REQUIRED, "count": 1, "value": 0.0}

    def check_args(self) -> None:
        self._key()
        self.args["at"] = self._int(self.args["at"], "at")
        self.args["count"] = self._int(self.args["count"], "count")
        self.args["value"] = self._number(self.args["value"], "value")
        if self.args["at"] < 0 or self.args["count"] < 1:
            raise ValueError(f"at must be >= 0 and count >= 1, got at={self.args['at']}, count={self.args['count']}")

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        if self.args["at"] > x.shape[1]:
            raise self._error(f"{episode.source}: at={self.args['at']} is past the {x.shape[1]} dims of "
                              f"{self.args['key']}")
        fill = np.full((x.shape[0], self.args["count"]), self.args["value"], dtype=x.dtype)
        out = np.concatenate([x[:, : self.args["at"]], fill, x[:, self.args["at"]:]], axis=1)
        return self._replace(episode, self.args["key"], out)


@register
class LatchGripper(Transform):
    """Relative gripper commands to an absolute open/closed state, as Octo's ``rel2abs_gripper_actions``.

    A command above ``threshold`` closes (``closing: positive``; ``negative`` flips the sign), one
    below ``-threshold`` opens, anything in between keeps the previous state. Before the first
    command the gripper is in the state that command leaves (a first "close" means it was open);
    with no command at all it is open. Output: ``open`` / ``closed`` (Octo: 1 / 0). Unlike
    ``relative_to_absolute_gripper`` (a saturating sum of magnitudes), only the sign of a command
    counts.
    """

    name = "latch_gripper"
    params = {"key": "action", "dim": Transform.REQUIRED, "threshold": 0.1, "closing": "positive",
              "open": 1.0, "closed": 0.0}

    def check_args(self) -> None:
        self._key()
        self.args["dim"] = self._int(self.args["dim"], "dim")
        for arg in ("threshold", "open", "closed"):
            self.args[arg] = self._number(self.args[arg], arg)
        if self.args["threshold"] < 0:
            raise ValueError(f"threshold must be >= 0, got {self.args['threshold']}")
        if self.args["closing"] not in ("positive", "negative"):
            raise ValueError(f"closing must be 'positive' or 'negative', got {self.args['closing']!r}")

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        column = self._column(x, self.args["dim"], episode)
        out = x.copy()
        out[:, column] = self.latch(x[:, column].astype(np.float64), self.args["threshold"],
                                    self.args["closing"] == "positive", self.args["open"], self.args["closed"])
        return self._replace(episode, self.args["key"], out)

    @staticmethod
    def latch(r: np.ndarray, threshold: float, closing_positive: bool, open_value: float,
              closed_value: float) -> np.ndarray:
        """``[T]`` absolute states from ``[T]`` relative commands (NaN stays NaN)."""
        signed = r if closing_positive else -r
        command = np.where(signed > threshold, -1, np.where(signed < -threshold, 1, 0))  # +1 open, -1 close
        index = np.where(command != 0, np.arange(len(r)), -1)
        last = np.maximum.accumulate(index) if len(r) else index
        nonzero = np.flatnonzero(command)
        start = -command[nonzero[0]] if len(nonzero) else 1
        state = np.where(last >= 0, command[np.maximum(last, 0)], start)
        return np.where(np.isnan(r), r, np.where(state > 0, open_value, closed_value))


@register
class QuatToEuler(Transform):
    """Replace a quaternion ``(x, y, z, w)`` at dims ``dim..dim+3`` by roll-pitch-yaw (extrinsic
    x-y-z, as tensorflow_graphics' ``euler.from_quaternion`` that Octo uses): ``[T, D] -> [T, D-1]``."""

    name = "quat_to_euler"
    params = {"key": "action", "dim": Transform.REQUIRED}

    def check_args(self) -> None:
        self._key()
        self.args["dim"] = self._int(self.args["dim"], "dim")
        if self.args["dim"] < 0:
            raise ValueError(f"dim must be >= 0, got {self.args['dim']}")

    def apply(self, episode: Episode) -> Episode:
        x = self._array(episode)
        at = self.args["dim"]
        if at + 4 > x.shape[1]:
            raise self._error(f"{episode.source}: dims {at}..{at + 3} are past the {x.shape[1]} dims of "
                              f"{self.args['key']}")
        euler = self.euler(x[:, at : at + 4].astype(np.float64)).astype(x.dtype)
        out = np.concatenate([x[:, :at], euler, x[:, at + 4:]], axis=1)
        return self._replace(episode, self.args["key"], out)

    @staticmethod
    def euler(q: np.ndarray) -> np.ndarray:
        """``[T, 4]`` quaternions (x, y, z, w; normalized here) to ``[T, 3]`` angles (x, y, z).

        A zero quaternion gives NaN angles, which the statistics then reject naming the dataset."""
        with np.errstate(invalid="ignore", divide="ignore"):
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x, y, z, w = q.T
        r00 = 1 - 2 * (y * y + z * z)
        r01 = 2 * (x * y - w * z)
        r02 = 2 * (x * z + w * y)
        r10 = 2 * (x * y + w * z)
        r20 = np.clip(2 * (x * z - w * y), -1.0, 1.0)
        r21 = 2 * (y * z + w * x)
        r22 = 1 - 2 * (x * x + y * y)
        general = np.stack([np.arctan2(r21, r22), -np.arcsin(r20), np.arctan2(r10, r00)], axis=1)
        # Gimbal lock (pitch at +-90 degrees): roll and yaw share one axis; yaw is set to 0.
        sign = np.where(r20 >= 0, 1.0, -1.0)
        locked = np.stack([np.arctan2(-sign * r01, -sign * r02), -sign * np.pi / 2, np.zeros_like(x)], axis=1)
        return np.where((1 - np.abs(r20) < 1e-9)[:, None], locked, general)


def build_transforms(specs: list[dict[str, Any]], where: str) -> list[Transform]:
    """Build transforms from config specs ``[{"name": ..., "args": {...}}, ...]``.

    ``where`` locates the specs in the config (e.g. ``"config.yaml: datasets[0].transforms"``)
    for error messages. Raises ``ConfigError`` for a malformed spec, an unknown name, or bad
    arguments, naming the transform and the problem.
    """
    if not isinstance(specs, list):
        raise ConfigError(where, f"transforms must be a list, got {type(specs).__name__}")
    transforms = []
    for position, spec in enumerate(specs):
        here = f"{where}[{position}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(
                here, f"a transform must be a mapping with 'name' (and 'args'), got {spec!r}"
            )
        extra_keys = sorted(set(spec) - {"name", "args"})
        if extra_keys:
            raise ConfigError(
                here,
                f"transform {spec['name']!r}: unexpected key(s) {', '.join(extra_keys)}; "
                "put arguments under 'args'",
            )
        cls = TRANSFORMS.get(spec["name"])
        if cls is None:
            raise ConfigError(
                here, f"unknown transform {spec['name']!r}; known: {', '.join(sorted(TRANSFORMS))}"
            )
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(
                here, f"transform {spec['name']!r}: args must be a mapping, got {args!r}"
            )
        transforms.append(cls(args, here))
    return transforms


def apply_transforms(episode: Episode, transforms: list[Transform]) -> Episode:
    """Apply transforms in order; returns a new episode and leaves the input untouched."""
    for transform in transforms:
        episode = transform.apply(episode)
    return episode


def transform_identity(transforms: list[Transform]) -> list[dict[str, Any]]:
    """Per transform: ``{"name", "args", "source_sha256"}``, for the dataset fingerprint.

    ``args`` has defaults filled in. ``source_sha256`` hashes the source of the transform's
    class and of its base classes, so editing a transform's body (or the shared
    helpers it inherits) changes the identity and invalidates cached statistics.
    """
    return [
        {"name": t.name, "args": dict(t.args), "source_sha256": _source_sha256(type(t))}
        for t in transforms
    ]


def _source_sha256(cls: type) -> str:
    digest = hashlib.sha256()
    for klass in cls.__mro__:
        if klass is not object:
            digest.update(inspect.getsource(klass).encode("utf-8"))
    return digest.hexdigest()
