"""Small, mergeable, deterministic samples of each dataset, collected while the statistics are read.

Validators look at raw values (gripper levels, image pixel ranges) that statistics do not keep.
Rather than re-reading datasets, the pipeline keeps a bottom-k sample: every step gets a priority
from a hash of (dataset, episode index, step), and a sample keeps the k steps with the smallest
priorities. Bottom-k samples merge exactly (associative, commutative, independent of how episodes
were split over workers) and are uniform over steps.

A ``DatasetSample`` holds up to ``max_steps`` sampled steps (action ``[K, D]``, state ``[K, Ds]``)
and, per image key, up to ``max_images`` encoded frames (bytes, never decoded here), at most one
per episode: the images a validator sees come from as many different episodes as possible. Images
stored as raw tensors (not JPEG/PNG) are kept as .npy bytes (``decode_frame``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from stepnorm import blobs
from stepnorm.stats.exact import SPLITMIX64_GAMMA, splitmix64_mix

DEFAULT_MAX_STEPS = 4096
DEFAULT_MAX_IMAGES = 16
FORMAT_VERSION = 1


def _splitmix_top53(seed: int) -> float:
    """``step_priorities`` of step 0 of an episode with this seed, in Python ints (mod 2**64):
    ``stats.exact.splitmix64_mix`` without numpy's per-call overhead (tested to give its bits)."""
    mask = (1 << 64) - 1
    z = (SPLITMIX64_GAMMA + seed) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return float(z >> 11) * (1.0 / (1 << 53))


def step_priorities(dataset: str, episode_index: int, length: int) -> np.ndarray:
    """Deterministic pseudo-random priorities in [0, 1) for the steps of one episode: splitmix64
    of (a blake2b seed of dataset and episode) + step, top 53 bits. Counter-based, so a call costs
    a few array operations (a numpy Generator per episode cost ~50 us, 5 calls per episode)."""
    seed = _seed(dataset, episode_index)
    if length == 1:  # one frame's priority (twice per episode): Python ints, the same bits
        return np.asarray([_splitmix_top53(seed)], np.float64)
    # uint64 array arithmetic wraps (no overflow warning for arrays)
    return _top53(splitmix64_mix(np.arange(1, length + 1, dtype=np.uint64) * np.uint64(SPLITMIX64_GAMMA)
                                 + np.uint64(seed)))


def _seed(dataset: str, episode_index: int) -> int:
    """An episode's priority seed: blake2b of ``dataset/episode_index``, 64 bits."""
    return int.from_bytes(hashlib.blake2b(f"{dataset}/{episode_index}".encode(), digest_size=8).digest(), "little")


def _top53(z: np.ndarray) -> np.ndarray:
    """uint64 hashes as floats in [0, 1): their top 53 bits."""
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _frame_bytes(frame) -> bytes:
    """Encoded frames stay as they are; an image stored as a raw tensor is kept as .npy bytes."""
    if isinstance(frame, (bytes, bytearray)):
        return bytes(frame)
    buf = io.BytesIO()
    np.save(buf, np.asarray(frame), allow_pickle=False)
    return buf.getvalue()


def decode_frame(blob: bytes) -> np.ndarray | None:
    """A frame stored by ``_frame_bytes`` as .npy; None for encoded images (JPEG/PNG: decode them)."""
    if blob[:6] != b"\x93NUMPY":
        return None
    return np.load(io.BytesIO(blob), allow_pickle=False)


def pick_frame(dataset: str, key: str, episode_index: int, length: int) -> int:
    """The one frame of an episode that may enter the image sample (so readers ship one, not T)."""
    return int(np.argmin(step_priorities(f"{dataset}#{key}", episode_index, length)))


def frame_priority(dataset: str, key: str, episode_index: int) -> float:
    """The sampling priority of an episode's chosen frame for ``key``."""
    return float(step_priorities(f"{dataset}#{key}#episode", episode_index, 1)[0])


@dataclass
class DatasetSample:
    """Bottom-k sample of one dataset's steps (and encoded frames per image key).

    ``priority`` (ascending), ``action [K, D]`` and ``state [K, Ds]`` are the kept steps. Offered
    steps wait in a pending list and are merged in one sort once there are ``max_steps`` of them
    (or when the sample is read): re-sorting the whole sample per episode would cost more than
    reading the episode. Steps whose priority cannot beat the largest kept one never wait.
    """

    max_steps: int = DEFAULT_MAX_STEPS
    max_images: int = DEFAULT_MAX_IMAGES
    num_steps_seen: int = 0
    _priority: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _action: np.ndarray | None = None  # [K, D] float64
    _state: np.ndarray | None = None  # [K, Ds] float64
    image_priority: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, list[bytes]] = field(default_factory=dict)
    _pending: list = field(default_factory=list, repr=False, compare=False)
    _pending_rows: int = field(default=0, repr=False, compare=False)

    @property
    def priority(self) -> np.ndarray:
        self._flush()
        return self._priority

    @property
    def action(self) -> np.ndarray | None:
        self._flush()
        return self._action

    @property
    def state(self) -> np.ndarray | None:
        self._flush()
        return self._state

    def add_episode(self, dataset: str, episode_index: int, action: np.ndarray, state: np.ndarray | None = None,
                    images: dict[str, list[bytes]] | None = None) -> None:
        """Offer every step of an episode; keeps the ``max_steps`` lowest priorities."""
        t_len = len(action)
        if t_len == 0:
            return
        self.num_steps_seen += t_len
        prio = step_priorities(dataset, episode_index, t_len)
        action = np.asarray(action, np.float64).reshape(t_len, -1)
        state = None if state is None else np.asarray(state, np.float64).reshape(t_len, -1)
        self._merge_steps(prio, action, state)
        for key, frames in (images or {}).items():
            if len(frames) == 1:
                # Already thinned by the reader (see ``pick_frame``).
                prio = frame_priority(dataset, key, episode_index)
                self._merge_images(key, np.asarray([prio]), list(frames))
            elif len(frames):
                chosen = pick_frame(dataset, key, episode_index, len(frames))
                self._merge_images(key, np.asarray([frame_priority(dataset, key, episode_index)]), [frames[chosen]])

    def add_episodes(self, dataset: str, episodes) -> None:
        """``add_episode`` for a batch of episodes (``(episode_index, action, state, images)``
        each, in order) at once: the same sample, bit for bit (bottom-k by priority, ties to the
        earlier step), with one priority computation and one merge per batch instead of per episode."""
        episodes = [(int(i), np.asarray(a, np.float64).reshape(len(a), -1),
                     None if s is None else np.asarray(s, np.float64).reshape(len(a), -1), images)
                    for i, a, s, images in episodes if len(a)]
        if not episodes:
            return
        lengths = np.asarray([len(a) for _, a, _, _ in episodes], np.int64)
        self.num_steps_seen += int(lengths.sum())
        seeds = np.asarray([_seed(dataset, i) for i, _, _, _ in episodes], np.uint64)
        # each step's counter within its episode (1-based), as step_priorities numbers them
        counter = np.arange(1, int(lengths.sum()) + 1, dtype=np.uint64)
        counter -= np.repeat(np.cumsum(lengths) - lengths, lengths).astype(np.uint64)
        prio = _top53(splitmix64_mix(counter * np.uint64(SPLITMIX64_GAMMA) + np.repeat(seeds, lengths)))
        action = np.concatenate([a for _, a, _, _ in episodes])
        states = [s for _, _, s, _ in episodes]
        state = None if any(s is None for s in states) else np.concatenate(states)
        self._merge_steps(prio, action, state)
        offered: dict[str, tuple[list[float], list]] = {}
        for index, _, _, images in episodes:
            for key, frames in (images or {}).items():
                if not len(frames):
                    continue
                frame = frames[0] if len(frames) == 1 else frames[pick_frame(dataset, key, index, len(frames))]
                got = offered.setdefault(key, ([], []))
                got[0].append(frame_priority(dataset, key, index))
                got[1].append(frame)
        for key, (prios, frames) in offered.items():
            self._merge_images(key, np.asarray(prios, np.float64), frames)

    def _merge_steps(self, prio, action, state) -> None:
        if self._action is None:
            self._action = np.zeros((0, action.shape[1]))
            self._state = None if state is None else np.zeros((0, state.shape[1]))
        if len(self._priority) >= self.max_steps:
            # Only priorities below the largest kept one can enter (ties lose to the kept step,
            # which arrived first); the kept maximum only falls, so this filter stays valid.
            enter = prio < self._priority[-1]
            if not enter.any():
                return
            prio, action = prio[enter], action[enter]
            state = None if state is None else state[enter]
        self._pending.append((prio, action, state))
        self._pending_rows += len(prio)
        if self._pending_rows >= self.max_steps:
            self._flush()

    def _flush(self) -> None:
        """Merge the pending steps: one stable sort of kept + pending (kept first: they arrived
        first, so ties resolve by arrival, exactly as merging one episode at a time)."""
        if not self._pending:
            return
        pending, self._pending, self._pending_rows = self._pending, [], 0
        all_prio = np.concatenate([self._priority] + [p for p, _, _ in pending])
        keep = np.argsort(all_prio, kind="stable")[: self.max_steps]
        self._priority = all_prio[keep]
        self._action = np.concatenate([self._action] + [a for _, a, _ in pending])[keep]
        if self._state is not None and all(st is not None for _, _, st in pending):
            self._state = np.concatenate([self._state] + [st for _, _, st in pending])[keep]
        else:
            self._state = None  # a sample keeps states only if every offered step had one

    def _merge_images(self, key, prio, frames) -> None:
        old_p = self.image_priority.get(key, np.zeros(0))
        if len(old_p) >= self.max_images and not (prio < old_p[-1]).any():
            return  # none can enter (ties lose to the kept frames, which arrived first)
        old_f = self.images.get(key, [])
        all_p = np.concatenate([old_p, prio])
        keep = np.argsort(all_p, kind="stable")[: self.max_images]
        self.image_priority[key] = all_p[keep]
        # only the frames that are kept are converted (raw tensors to .npy bytes)
        self.images[key] = [old_f[i] if i < len(old_f) else _frame_bytes(frames[i - len(old_f)]) for i in keep]

    def merge(self, other: "DatasetSample") -> "DatasetSample":
        """Merge ``other`` into self; returns self."""
        self.num_steps_seen += other.num_steps_seen
        if other.action is not None and len(other.action):
            self._merge_steps(other.priority, other.action, other.state)
        for key, frames in other.images.items():
            self._merge_images(key, other.image_priority[key], list(frames))
        return self

    def to_bytes(self) -> bytes:
        arrays = {"limits": np.asarray([self.max_steps, self.max_images]),
                  "num_steps_seen": np.asarray(self.num_steps_seen), "priority": self.priority}
        if self.action is not None:
            arrays["action"] = self.action
        if self.state is not None:
            arrays["state"] = self.state
        for i, key in enumerate(sorted(self.images)):
            frames = self.images[key]
            arrays[f"image{i}.key"] = np.asarray(key)
            arrays[f"image{i}.priority"] = self.image_priority[key]
            arrays.update(blobs.ragged_bytes(f"image{i}", frames))
        return blobs.pack(arrays, FORMAT_VERSION)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "DatasetSample":
        with blobs.unpack(blob, FORMAT_VERSION, "validators' sample") as z:
            max_steps, max_images = (int(x) for x in z["limits"])
            out = cls(max_steps, max_images, int(z["num_steps_seen"]), z["priority"].copy(),
                      z["action"].copy() if "action" in z else None, z["state"].copy() if "state" in z else None)
            i = 0
            while f"image{i}.key" in z:
                key = str(z[f"image{i}.key"])
                out.images[key] = blobs.split_ragged_bytes(z, f"image{i}")
                out.image_priority[key] = z[f"image{i}.priority"].copy()
                i += 1
        return out
