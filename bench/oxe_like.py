"""Generate an OXE-like RLDS dataset for benchmarks (not shipped, not a test).

Two 128x128 JPEG cameras, 7-D actions (end-effector delta + gripper), 8-D state, ~100 steps per
episode, written with TFDS's own builder (so it is a normal TFDS directory with several shards).

Usage: python bench/oxe_like.py OUT_DIR [--size-gb 1.0] [--name oxe_like] [--seed 0]
API:   write_oxe_like(out_dir, size_gb=1.0, name="oxe_like", seed=0) -> Path of the version dir
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

SIZE = 128
BYTES_PER_STEP_ESTIMATE = 2 * 11_700 + 300  # two JPEG frames of this content, plus the numeric fields


def _features():
    import tensorflow_datasets as tfds

    image = tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="jpeg")
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
            "observation": tfds.features.FeaturesDict({
                "state": tfds.features.Tensor(shape=(8,), dtype=np.float32),
                "image": image,
                "wrist_image": image,
            }),
            "is_first": np.bool_,
            "is_last": np.bool_,
            "is_terminal": np.bool_,
            "reward": np.float32,
            "discount": np.float32,
            "language_instruction": tfds.features.Text(),
        }),
        "episode_metadata": tfds.features.FeaturesDict({"episode_id": np.int32}),
    })


def _frames(rng, t_len, pos):
    """A textured scene with a moving object: compresses like a camera image (~9 KB per frame)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = (np.stack([xx, yy, (xx + yy) // 2], axis=-1) * rng.uniform(0.5, 1.5)).astype(np.float32)
    texture = rng.normal(0, 18, size=(SIZE, SIZE, 3)).astype(np.float32)
    frames = np.empty((t_len, SIZE, SIZE, 3), np.uint8)
    for t in range(t_len):
        img = base + texture + rng.normal(0, 6, size=(SIZE, SIZE, 3))
        cx, cy = int((pos[t, 0] % 1.0) * (SIZE - 24)), int((pos[t, 1] % 1.0) * (SIZE - 24))
        img[cy : cy + 24, cx : cx + 24] = (230, 60, 40)
        frames[t] = np.clip(img, 0, 255)
    return frames


POOL = 256  # distinct encoded frames per camera; episodes draw runs of them


def _frame_pool(rng, image_feature):
    """JPEG-encoded frames of a moving object, encoded once: generating is then bound by writing,
    not by JPEG encoding (statistics never decode images, so reusing frames changes nothing)."""
    pos = rng.uniform(0, 1, size=(POOL, 2)) + np.linspace(0, 3, POOL)[:, None]
    return [image_feature.encode_example(frame) for frame in _frames(rng, POOL, pos)]


def _episodes(n, seed):
    rng = np.random.default_rng(seed)
    image_feature = _features()["steps"]["observation"]["image"]
    pools = [_frame_pool(rng, image_feature) for _ in range(2)]
    for i in range(n):
        t_len = int(rng.integers(80, 121))
        vel = rng.normal(0, 0.01, size=(t_len, 6)).cumsum(axis=0) * 0.1
        pos = vel.cumsum(axis=0) + rng.uniform(0, 1, size=6)
        grip = (np.sin(np.linspace(0, rng.uniform(2, 6), t_len)) > 0).astype(np.float32)
        action = np.concatenate([vel, grip[:, None]], axis=1).astype(np.float32)
        state = np.concatenate([pos, grip[:, None], np.zeros((t_len, 1))], axis=1).astype(np.float32)
        last = np.arange(t_len) == t_len - 1
        yield i, {
            "steps": {
                "action": action,
                "observation": {"state": state, "image": _run(pools[0], rng, t_len),
                                "wrist_image": _run(pools[1], rng, t_len)},
                "is_first": np.arange(t_len) == 0, "is_last": last, "is_terminal": last,
                "reward": last.astype(np.float32), "discount": np.ones(t_len, np.float32),
                "language_instruction": ["put the red block in the bowl"] * t_len,
            },
            "episode_metadata": {"episode_id": i},
        }


def _run(pool, rng, t_len):
    start = int(rng.integers(POOL))
    return [pool[(start + t) % POOL] for t in range(t_len)]


def write_oxe_like(out_dir, size_gb: float = 1.0, name: str = "oxe_like", seed: int = 0) -> Path:
    """Write (once) a dataset of about ``size_gb`` GB; returns its version directory."""
    import tensorflow_datasets as tfds

    out = Path(out_dir).resolve()
    version_dir = out / name / "1.0.0"
    if (version_dir / "dataset_info.json").exists():
        return version_dir
    n = max(4, int(size_gb * 1e9 / (100 * BYTES_PER_STEP_ESTIMATE)))
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=_features(), split_datasets={"train": _episodes(n, seed)},
        data_dir=str(out), description="stepnorm benchmark: OXE-like generated dataset", disable_shuffling=True,
    )
    return version_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--name", default="oxe_like")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = write_oxe_like(args.out, args.size_gb, args.name, args.seed)
    total = sum(f.stat().st_size for f in path.glob("*.tfrecord*"))
    print(f"{path}: {total / 1e9:.2f} GB in {len(list(path.glob('*.tfrecord*')))} shards")


if __name__ == "__main__":
    main()
