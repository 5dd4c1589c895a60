"""The one definition of action chunks, their validity and delta actions (SPEC section 2).

For an episode of length ``T`` and horizon ``H`` the chunk at step ``t`` holds ``A_t[k] = a_{t+k}``
for ``k < H``; entries with ``t + k >= T`` are padding: never counted in statistics, flagged invalid
in the written data, and filled by repeating the last action (as LeRobot and Octo pad). With a
``delta_mask``, marked dims hold ``a_{t+k}[d] - s_t[d]`` (the delta is applied after the repeat).

Two views of the same definition, used by everything that builds chunks:

- ``action_chunks``: every step's materialized chunk ``[T, H, D]`` and its validity ``[T, H]``
  (the writer, the integrations' tests and training-time normalization);
- ``episode_entries``: the valid entries grouped for statistics without materializing chunks.
  For a plain (non-delta) dim the valid entries at position ``k`` over one episode are exactly the
  suffix ``a[k:]``, so position ``k`` over all episodes is ``TAIL ∪ HEAD[k] ∪ ... ∪ HEAD[H-2]``
  (``position_members``), where ``HEAD[j]`` holds each episode's action at index ``j < H-1`` and
  ``TAIL`` every action at index ``>= H-1``: each action is added once. Delta dims depend on both
  ``t`` and ``k`` and are grouped per position (``DELTA``); ``RAW`` holds the delta dims' stored
  actions once per step, ``STATE`` the state.

The DELTA entries are the bulk of the data (``T*H`` distinct entries per episode and delta dim, as
many as the whole chunks), so the statistics build them with ``delta_by_lag`` instead: the same
entries, bit for bit, for a batch of episodes at once, cell by cell and without padding.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# The entry groups of ``episode_entries`` (also the accumulator's serialized group names).
HEAD, TAIL, DELTA, RAW, STATE = "head", "tail", "delta", "raw", "state"

__all__ = ["DELTA", "HEAD", "RAW", "STATE", "TAIL", "action_chunks", "chunk_index", "delta_by_lag", "delta_dims",
           "episode_entries", "group_shapes", "plain_dims", "position_members", "split_dims"]


def delta_dims(delta_mask: Sequence[bool] | None) -> np.ndarray:
    """The action dims a ``delta_mask`` marks (none without one)."""
    return np.flatnonzero(np.asarray(delta_mask, bool)) if delta_mask is not None else np.zeros(0, np.int64)


def plain_dims(action_dim: int, delta_mask: Sequence[bool] | None) -> np.ndarray:
    """The action dims that hold stored actions in the chunk."""
    return np.setdiff1d(np.arange(action_dim), delta_dims(delta_mask))


def split_dims(action_dim: int, delta_mask: Sequence[bool] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(plain_dims, delta_dims)``, computed once per layout (this runs per episode); read-only."""
    return _split_dims(action_dim, None if delta_mask is None else tuple(bool(x) for x in delta_mask))


@functools.lru_cache(maxsize=64)
def _split_dims(action_dim: int, delta_mask: tuple[bool, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    plain, delta = plain_dims(action_dim, delta_mask), delta_dims(delta_mask)
    plain.flags.writeable = delta.flags.writeable = False
    return plain, delta


def chunk_index(t_len: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``index [T, H]`` of the action each chunk entry takes (``t + k``, clamped to the last step)
    and ``valid [T, H]`` (``t + k < T``)."""
    index = np.arange(t_len)[:, None] + np.arange(horizon)[None, :]
    return np.minimum(index, max(t_len - 1, 0)), index < t_len


def action_chunks(action: np.ndarray, state: np.ndarray | None, horizon: int,
                  delta_mask: Sequence[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every step's action chunk and its validity.

    Args:
        action: ``[T, D]`` actions.
        state: ``[T, Ds]`` states (needed when ``delta_mask`` marks any dim).
        horizon: ``H``.
        delta_mask: per action dim, True where the chunk holds ``a_{t+k} - s_t``.

    Returns:
        ``chunk [T, H, D]`` float64 with ``chunk[t, k] = a_{min(t+k, T-1)}`` (delta applied after
        the padding repeat), and ``valid [T, H]`` bool, False where ``t + k >= T``.
    """
    index, valid = chunk_index(action.shape[0], horizon)
    chunk = np.asarray(action, np.float64)[index]
    dims = delta_dims(delta_mask)
    if len(dims):
        chunk[:, :, dims] -= np.asarray(state, np.float64)[:, None, dims]
    return chunk, valid


def group_shapes(horizon: int, action_dim: int, state_dim: int | None,
                 delta_mask: Sequence[bool] | None) -> dict[str, tuple[int, ...]]:
    """The cell shape of each entry group for these dims (RAW only with delta dims, STATE only with
    a state), in a fixed order."""
    n_plain, n_delta = len(plain_dims(action_dim, delta_mask)), len(delta_dims(delta_mask))
    shapes = {HEAD: (horizon - 1, n_plain), TAIL: (n_plain,), DELTA: (horizon, n_delta)}
    if n_delta:
        shapes[RAW] = (n_delta,)
    if state_dim is not None:
        shapes[STATE] = (state_dim,)
    return shapes


def episode_entries(action: np.ndarray, state: np.ndarray | None, horizon: int,
                    delta_mask: Sequence[bool] | None = None) -> dict[str, np.ndarray]:
    """One episode's valid chunk entries per group, ``[N, *group cell shape]`` float64 (NaN = no entry).

    HEAD ``[1, H-1, Dp]``: the plain dims' actions at indices ``0..H-2`` (NaN beyond the episode);
    TAIL ``[T-H+1, Dp]``: those at indices ``>= H-1``; DELTA ``[T, H, Dd]``: ``a_{t+k} - s_t`` per
    step and position (NaN where ``t + k >= T``); RAW ``[T, Dd]``: the delta dims' stored actions;
    STATE ``[T, Ds]``. Groups without dims are left out; an empty episode has no entries.
    """
    t_len = len(action)
    out: dict[str, np.ndarray] = {}
    if t_len == 0:
        return out
    action = np.asarray(action, np.float64).reshape(t_len, -1)
    plain, delta = split_dims(action.shape[1], delta_mask)
    if len(plain):
        a = action[:, plain]
        head = np.full((1, horizon - 1, len(plain)), np.nan)
        n_head = min(t_len, horizon - 1)
        head[0, :n_head] = a[:n_head]
        out[HEAD] = head
        out[TAIL] = a[horizon - 1:]
    if state is not None:
        state = np.asarray(state, np.float64).reshape(t_len, -1)
    if len(delta):
        padded = np.concatenate([action[:, delta], np.full((horizon - 1, len(delta)), np.nan)], axis=0)
        window = sliding_window_view(padded, horizon, axis=0)  # [T, Dd, H]: window[t, d, k] = a_{t+k}
        out[DELTA] = window.transpose(0, 2, 1) - state[:, None, delta]
        out[RAW] = action[:, delta]
    if state is not None:
        out[STATE] = state
    return out


def delta_by_lag(episodes: Sequence[tuple[np.ndarray, np.ndarray]], horizon: int,
                 lags: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The DELTA entries of a batch of whole episodes, per chunk position.

    Args:
        episodes: per episode ``(action [T, Dd], state [T, Dd])``, the delta dims only, float64.
        horizon: ``H``.
        lags: the positions wanted (default all ``0..H-1``), ascending.

    Yields:
        ``(k, rows [Dd, n_k])``: row ``j`` holds ``a_{t+k}[j] - s_t[j]`` for every step ``t`` of
        every episode with ``t + k < T``, in episode and step order: the valid entries of
        ``episode_entries``' DELTA cell ``(k, j)``, the same float64 values, with no NaN. Rows
        are contiguous.
    """
    lengths = np.asarray([len(a) for a, _ in episodes], np.int64)
    n = int(lengths.sum())
    # steps from each step to its episode's end, itself included: t + k < T iff remaining > k
    remaining = np.repeat(np.cumsum(lengths), lengths) - np.arange(n)
    a = np.ascontiguousarray(np.concatenate([a for a, _ in episodes]).T)
    s = np.ascontiguousarray(np.concatenate([s for _, s in episodes]).T)
    for k in range(horizon) if lags is None else lags:
        if k >= n:
            yield k, np.zeros((a.shape[0], 0))
            continue
        # a dim at a time with a 1-D mask: about twice as fast as a 2-D gather of all dims
        valid = remaining[: n - k] > k
        rows = np.empty((a.shape[0], int(np.count_nonzero(valid))))
        for j in range(a.shape[0]):
            np.subtract(a[j, k:][valid], s[j, : n - k][valid], out=rows[j])
        yield k, rows


def position_members(pos: int, horizon: int) -> list[tuple[str, int | None]]:
    """The groups whose union is chunk position ``pos`` of a plain dim: ``(TAIL, None)`` and
    ``(HEAD, j)`` for ``j`` in ``pos..H-2``."""
    return [(TAIL, None)] + [(HEAD, j) for j in range(pos, horizon - 1)]
