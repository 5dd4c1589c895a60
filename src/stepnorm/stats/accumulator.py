"""The mergeable per-(dataset, key) accumulator for action-chunk statistics.

Chunk semantics (SPEC section 2) and how an episode's valid entries are grouped without
materializing chunks (plain dims as HEAD/TAIL, delta dims per position) are defined once in
stepnorm.chunks; each group is a ``CellGroup`` here, and the per-timestep statistics are assembled
at the end by suffix merges (stepnorm.stats.combine): moments exactly, and each output cell's exact
quantiles from the member cells it is the union of (see stepnorm.stats.exact).

Batches are buffered and reduced together, so the per-episode cost is a few numpy calls and the
per-cell loop runs once per ~1M buffered values, not per step, episode or chunk position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stepnorm import blobs, chunks
from stepnorm.errors import InputDataError, NonFiniteError
from stepnorm.stats.moments import Moments
from stepnorm.stats.exact import DEFAULT_SAMPLE_K, SampleGrid

FLUSH_VALUES = 1 << 20
# DELTA buffers its episodes' inputs (2 * Dd values per step) and builds ``H * Dd`` entries per
# step at flush one position at a time, so it counts buffered values per step times this much:
# a flush covers ~22k steps at Dd = 6 (a few MB per position's arrays).
DELTA_FLUSH_WEIGHT = 8
FORMAT_VERSION = 3


class CellGroup:
    """Moments and bracketing samples for an array of cells, fed with buffered batches."""

    def __init__(self, shape: tuple[int, ...], k: int, moments: Moments | None = None, samples: SampleGrid | None = None):
        self.shape = tuple(shape)
        self.moments = moments if moments is not None else Moments.empty(self.shape)
        self.samples = samples if samples is not None else SampleGrid(self.shape, k)
        self._pending: list[np.ndarray] = []
        self._pending_values = 0

    def add(self, batch) -> None:
        """Buffer one batch: ``values [N, *shape]`` (NaN = no value in that cell; DeltaGroup: an
        episode's delta inputs)."""
        size = self.batch_values(batch)
        if not size:
            return
        self._pending.append(batch)
        self._pending_values += size
        if self._pending_values >= FLUSH_VALUES:
            self.flush()

    def batch_values(self, batch) -> int:
        """What buffering ``batch`` (as ``add`` takes it) counts towards a flush."""
        return batch.size

    def flush(self) -> None:
        if not self._pending:
            return
        batch = np.concatenate(self._pending, axis=0)
        self._pending, self._pending_values = [], 0
        self.moments.add_batch(batch)
        self.samples.update(batch)

    def merge(self, other: "CellGroup", samples: bool = True) -> None:
        self.flush()
        other.flush()
        self.moments.merge(other.moments)
        if samples:
            self.samples.merge(other.samples)


class DeltaGroup(CellGroup):
    """The DELTA group (cells ``[H, Dd]``): fed with each episode's delta dims' actions and states,
    its entries built at flush for the buffered episodes at once, cell by cell
    (``chunks.delta_by_lag``): the same entries as ``chunks.episode_entries``' DELTA, without the
    padding and the ``[T, H, Dd]`` layout."""

    def batch_values(self, batch) -> int:
        """``batch``: one episode's ``(action [T, Dd], state [T, Dd])`` (the delta dims)."""
        return batch[0].shape[0] * self.shape[1] * DELTA_FLUSH_WEIGHT

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._pending_values = self._pending, [], 0
        horizon, dims = self.shape
        batch = Moments.empty(self.shape)
        for k, rows in chunks.delta_by_lag(pending, horizon):
            part = Moments.of_rows(rows)
            for name in ("n", "mean", "m2", "min", "max"):
                getattr(batch, name)[k] = getattr(part, name)
            self.samples.update_cells(k * dims, rows)
        self.moments.merge(batch)


def _group(key: str, shape: tuple[int, ...], k: int, moments: Moments | None = None,
           samples: SampleGrid | None = None) -> CellGroup:
    return (DeltaGroup if key == chunks.DELTA else CellGroup)(shape, k, moments, samples)


@dataclass(frozen=True)
class AccumulatorSpec:
    """What an accumulator computes; two accumulators merge only if their specs are equal.

    Attributes:
        horizon: chunk length ``H``.
        delta_mask: per action dim, True where the chunk holds ``a_{t+k} - s_t`` (or None).
        sketch_k: size ``k`` of each cell's bracketing sample (distinct values; see
            stepnorm.stats.exact). Quantiles are exact for every ``k``; a larger ``k`` means fewer
            entries collected per quantile in the last pass, at ``16 k`` bytes per cell.
    """

    horizon: int
    delta_mask: tuple[bool, ...] | None = None
    sketch_k: int = DEFAULT_SAMPLE_K

    def __post_init__(self):
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")


class ChunkStatsAccumulator:
    """Per-(dataset, key) statistics gathered from whole episodes; mergeable and serializable.

    Dims ``D`` (action) and ``Ds`` (state) are fixed by the first episode with data. Use
    ``add_episode``, ``merge``, ``to_bytes``/``from_bytes`` and ``finalize``.

    ``shared_samples``: a dict (group key -> ``SampleGrid``) this accumulator's groups take their
    bracketing samples from and put theirs in: accumulators of consecutive parts of one dataset
    sharing one dict continue one sample per group (bottom-k samples are the same however the
    entries are split, so a part need not start its own), while each part keeps its own moments.
    Merge such parts with ``merge(..., samples=False)``.
    """

    def __init__(self, spec: AccumulatorSpec, name: str = "dataset", shared_samples: dict | None = None):
        self.spec = spec
        self.name = name
        self.shared_samples = shared_samples
        self.num_episodes = 0
        self.num_steps = 0
        self.action_dim: int | None = None
        self.state_dim: int | None = None
        self.groups: dict[str, CellGroup] = {}
        # The episodes again, for the exact-quantile passes (see ``finalize``); never serialized.
        self.data = None

    # -- layout -----------------------------------------------------------------------------
    @property
    def delta_dims(self) -> np.ndarray:
        return chunks.delta_dims(self.spec.delta_mask)

    @property
    def plain_dims(self) -> np.ndarray:
        return chunks.split_dims(self.action_dim, self.spec.delta_mask)[0]

    def _init_layout(self, action_dim: int, state_dim: int | None, where: str) -> None:
        spec = self.spec
        if spec.delta_mask is not None and len(spec.delta_mask) != action_dim:
            raise InputDataError(
                where, f"delta_mask has {len(spec.delta_mask)} entries but the action has {action_dim} dims"
            )
        n_delta = len(self.delta_dims)
        if n_delta and (state_dim is None or self.delta_dims.max() >= state_dim):
            raise InputDataError(
                where,
                f"delta_mask marks action dims {self.delta_dims.tolist()} relative to the state, "
                f"but the state has {state_dim or 0} dims",
            )
        self.action_dim, self.state_dim = action_dim, state_dim
        # RAW (the delta dims' stored values, once per step) is what consumers that normalize
        # stored actions (Octo) need; plain dims have theirs in HEAD/TAIL.
        shapes = chunks.group_shapes(spec.horizon, action_dim, state_dim, spec.delta_mask)
        self.groups = {key: _group(key, shape, spec.sketch_k) for key, shape in shapes.items()}
        if self.shared_samples is not None:
            for key, group in self.groups.items():
                shared = self.shared_samples.setdefault(key, group.samples)
                if shared.shape == group.samples.shape:  # else the merge reports the dims
                    group.samples = shared

    # -- adding data --------------------------------------------------------------------------
    def add_episode(self, action: np.ndarray, state: np.ndarray | None = None, source: str | None = None) -> None:
        """Add one whole episode: ``action [T, D]``, ``state [T, Ds]`` (or None)."""
        where = f"{self.name} ({source})" if source else self.name
        action = _as_2d(action, where, "action")
        state = None if state is None else _as_2d(state, where, "state")
        t_len = action.shape[0]
        if state is not None and state.shape[0] != t_len:
            raise InputDataError(where, f"action has {t_len} steps but state has {state.shape[0]}")
        _check_finite(action, where, "action")
        if state is not None:
            _check_finite(state, where, "state")
        state_dim = None if state is None else state.shape[1]
        if self.action_dim is None:
            if t_len == 0:
                self.num_episodes += 1
                return
            self._init_layout(action.shape[1], state_dim, where)
        elif action.shape[1] != self.action_dim or state_dim != self.state_dim:
            raise InputDataError(
                where,
                f"action/state dims {action.shape[1]}/{state_dim} differ from earlier episodes' "
                f"{self.action_dim}/{self.state_dim}",
            )
        self.num_episodes += 1
        self.num_steps += t_len
        for key, batch in self.group_batches(action, state).items():
            self.groups[key].add(batch)

    def group_batches(self, action: np.ndarray, state: np.ndarray | None) -> dict[str, object]:
        """One episode's entries per cell group, as ``add_episode`` adds them: ``[N, *cells]``
        (NaN = no entry) per group, except DELTA: the episode's ``(action, state)`` of the delta
        dims, whose entries ``chunks.delta_by_lag`` builds for a batch of episodes.

        The exact-quantile passes read the data again through this, so they see exactly the
        entries the moments saw. ``action``/``state`` must match the accumulator's dims.
        """
        if len(action) == 0:
            return {}
        action = np.asarray(action, np.float64).reshape(len(action), -1)
        state = None if self.state_dim is None else np.asarray(state, np.float64).reshape(len(action), -1)
        plain, delta = chunks.split_dims(self.action_dim, self.spec.delta_mask)
        if not len(delta):
            return chunks.episode_entries(action, state, self.spec.horizon, None)
        out = chunks.episode_entries(action[:, plain], state, self.spec.horizon, None)
        out[chunks.DELTA] = (action[:, delta], state[:, delta])
        out[chunks.RAW] = action[:, delta]
        return out

    def merge(self, other: "ChunkStatsAccumulator", samples: bool = True) -> "ChunkStatsAccumulator":
        """Merge ``other`` into self (associative, commutative); returns self. ``samples=False``:
        counts and moments only (the two share their bracketing samples: ``shared_samples``)."""
        if other.spec != self.spec:
            raise ValueError(f"cannot merge accumulators with different specs: {self.spec} vs {other.spec}")
        self.num_episodes += other.num_episodes
        self.num_steps += other.num_steps
        if other.action_dim is None:
            return self
        if self.action_dim is None:
            self.action_dim, self.state_dim = other.action_dim, other.state_dim
            self.groups = {key: _copy_group(key, g) for key, g in other.groups.items()}
            return self
        if (other.action_dim, other.state_dim) != (self.action_dim, self.state_dim):
            raise InputDataError(
                self.name,
                f"cannot merge statistics of action/state dims {other.action_dim}/{other.state_dim} "
                f"into {self.action_dim}/{self.state_dim}",
            )
        for key, group in self.groups.items():
            group.merge(other.groups[key], samples)
        return self

    def flush(self) -> None:
        for group in self.groups.values():
            group.flush()

    # -- serialization ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """A self-contained binary form (npz; no pickle)."""
        self.flush()
        arrays = {
            "horizon": np.asarray(self.spec.horizon),
            "sketch_k": np.asarray(self.spec.sketch_k),
            "delta_mask": np.asarray(self.spec.delta_mask if self.spec.delta_mask is not None else [], bool),
            "has_delta_mask": np.asarray(self.spec.delta_mask is not None),
            "counts": np.asarray([self.num_episodes, self.num_steps], np.int64),
            "dims": np.asarray([-1 if self.action_dim is None else self.action_dim,
                                -1 if self.state_dim is None else self.state_dim], np.int64),
            "name": np.asarray(self.name),
        }
        for key, group in self.groups.items():
            for field, value in group.moments.to_arrays().items():
                arrays[f"{key}.{field}"] = value
            arrays.update(group.samples.to_arrays(key))
        return blobs.pack(arrays, FORMAT_VERSION)

    def __reduce__(self):
        # One compact, versioned form for pickling (Beam) and for files.
        return (ChunkStatsAccumulator.from_bytes, (self.to_bytes(),))

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ChunkStatsAccumulator":
        with blobs.unpack(blob, FORMAT_VERSION, "accumulator") as z:
            delta_mask = tuple(bool(x) for x in z["delta_mask"]) if bool(z["has_delta_mask"]) else None
            spec = AccumulatorSpec(int(z["horizon"]), delta_mask, int(z["sketch_k"]))
            acc = cls(spec, str(z["name"]))
            acc.num_episodes, acc.num_steps = (int(x) for x in z["counts"])
            action_dim, state_dim = (int(x) for x in z["dims"])
            if action_dim >= 0:
                acc.action_dim, acc.state_dim = action_dim, (state_dim if state_dim >= 0 else None)
                shapes = chunks.group_shapes(spec.horizon, acc.action_dim, acc.state_dim, delta_mask)
                for key in shapes:
                    moments = Moments.from_arrays({f: z[f"{key}.{f}"] for f in ("n", "mean", "m2", "min", "max")})
                    samples = SampleGrid.from_arrays(moments.shape, spec.sketch_k, z, key)
                    acc.groups[key] = _group(key, moments.shape, spec.sketch_k, moments, samples)
        return acc

    # -- results ------------------------------------------------------------------------------
    def finalize(self, data=None):
        """The statistics as a ``FinalStats`` (see stepnorm.stats.combine).

        ``data`` gives the episodes again (a sequence of ``(action, state)`` or Episodes, or a
        callable returning an iterable of them) for the exact-quantile passes, default
        ``self.data``; it is needed only when a cell holds more than ``spec.sketch_k`` distinct values.
        """
        from stepnorm.stats.combine import FinalStats

        return FinalStats.from_accumulator(self, data if data is not None else self.data)


def _copy_group(key: str, group: CellGroup) -> CellGroup:
    group.flush()
    return _group(key, group.shape, group.samples.k, group.moments.copy(), group.samples.copy())


def _as_2d(x: np.ndarray, where: str, key: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InputDataError(where, f"{key} must be [T, D], got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise InputDataError(where, f"{key} has non-numeric dtype {x.dtype}")
    return x.astype(np.float64, copy=False)


def _check_finite(x: np.ndarray, where: str, key: str) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        step, dim = (int(i) for i in np.argwhere(~finite)[0])
        bad_dims = np.flatnonzero(~finite.all(axis=0)).tolist()
        raise NonFiniteError(
            where, f"{key} dim {dim} holds {x[step, dim]} at step {step} (non-finite values in dims {bad_dims})"
        )
