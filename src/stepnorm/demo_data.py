"""The built-in demo mixture (`stepnorm sample DIR`): two small RLDS datasets (``sim``, ``real``) and a config.

Both are pick-and-place episodes of a 7-D action (absolute end-effector position and rotation
targets for the next step, gripper) with an 8-D state and one 64x64 JPEG camera, written with TFDS's own builder machinery so
they are ordinary TFDS directories. They differ the way sim and real data do: the sim gripper is
continuous in [-1, 1], the real one quantized to {0, 1}; the sim workspace is wider. Generation is
deterministic (fixed seeds, no shuffling).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import yaml

from stepnorm import outputs

SAMPLE_DATASETS = {
    # name: (domain, seed, episodes, quantized gripper, workspace half-width)
    "sim_pick": ("sim", 0, 40, False, 0.25),
    "real_pick": ("real", 1, 24, True, 0.12),
}
ACTION_DIM, STATE_DIM, IMAGE_SIZE = 7, 8, 64
# Bumped whenever the generated data changes, so an older sample on disk is regenerated.
SAMPLE_REVISION = 2


def _features():
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "action": tfds.features.Tensor(shape=(ACTION_DIM,), dtype=np.float32),
            "observation": tfds.features.FeaturesDict({
                "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg"),
            }),
            "is_first": np.bool_,
            "is_last": np.bool_,
            "is_terminal": np.bool_,
            "reward": np.float32,
            "language_instruction": tfds.features.Text(),
        }),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text(), "episode_id": np.int32}),
    })


def _episode(rng: np.random.Generator, index: int, quantized: bool, half_width: float, name: str) -> dict:
    t_len = int(rng.integers(6, 60))
    start = rng.uniform(-half_width, half_width, size=3) + np.array([0.25, 0.0, 0.15])
    goal = rng.uniform(-half_width, half_width, size=3) + np.array([0.25, 0.0, 0.1])
    phase = np.linspace(0.0, 1.0, t_len)[:, None]
    pos = start + (goal - start) * (3 * phase**2 - 2 * phase**3) + rng.normal(0, 0.002, size=(t_len, 3))
    rot = np.cumsum(rng.normal(0, 0.01, size=(t_len, 3)), axis=0)
    grip = np.clip(np.tanh(6 * (phase[:, 0] - 0.5)) + rng.normal(0, 0.05, t_len), -1, 1)
    if quantized:
        grip = (grip > 0).astype(np.float64)
    # action: the next step's end-effector pose (absolute targets) and the gripper command; the
    # config's delta_mask makes the chunk relative to the current state, as openpi does
    target = np.concatenate([pos[1:], pos[-1:]], axis=0)
    action = np.concatenate([target, rot, grip[:, None]], axis=1).astype(np.float32)
    state = np.concatenate([pos, rot, grip[:, None], np.zeros((t_len, 1))], axis=1).astype(np.float32)
    frames = np.zeros((t_len, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    cx = np.clip(((pos[:, 0] - 0.25) / 0.6 + 0.5) * IMAGE_SIZE, 4, IMAGE_SIZE - 5).astype(int)
    cy = np.clip((pos[:, 1] / 0.6 + 0.5) * IMAGE_SIZE, 4, IMAGE_SIZE - 5).astype(int)
    frames[:] = rng.integers(40, 90, size=3, dtype=np.uint8)
    for t in range(t_len):  # a gripper marker per frame: images must be real pictures, not noise
        frames[t, cy[t] - 3 : cy[t] + 4, cx[t] - 3 : cx[t] + 4] = (220, 200, 40)
    steps = {
        "action": action,
        "observation": {"state": state, "image": frames},
        "is_first": np.arange(t_len) == 0,
        "is_last": np.arange(t_len) == t_len - 1,
        "is_terminal": np.arange(t_len) == t_len - 1,
        "reward": (np.arange(t_len) == t_len - 1).astype(np.float32),
        "language_instruction": ["pick up the block"] * t_len,
    }
    return {"steps": steps, "episode_metadata": {"file_path": f"{name}/episode_{index:04d}", "episode_id": index}}


@contextlib.contextmanager
def _quiet_tfds():
    """Keep TFDS's builder output off the terminal while it writes the sample.

    ``store_as_tfds_dataset`` prints "Downloading and preparing ..." / "... downloaded and
    prepared" (stdout), draws tqdm progress bars (stderr) and logs absl warnings about the empty
    folder it is about to fill; for a built-in sample none of it tells the user anything, and it
    buried stepnorm's own lines in ``make demo``. Both streams are redirected only for the call
    (TFDS's own progress-bar switch is global and has no getter to restore it); errors still
    reach the caller as exceptions, and absl errors still go through logging.
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)


def write_sample(out_dir: str | Path) -> Path:
    """Write the sample datasets and ``config.yaml`` under ``out_dir``; returns the config path."""
    import tensorflow_datasets as tfds

    out = outputs.check_output(out_dir, "sample")
    if _is_current(out):
        return out / "config.yaml"
    with outputs.writing(out, "sample") as staging:
        entries = []
        for name, (domain, seed, n, quantized, half_width) in SAMPLE_DATASETS.items():
            rng = np.random.default_rng(seed)
            episodes = [_episode(rng, i, quantized, half_width, name) for i in range(n)]
            n_val = max(2, n // 8)
            with _quiet_tfds():
                tfds.dataset_builders.store_as_tfds_dataset(
                    name=name, version="1.0.0", features=_features(),
                    split_datasets={"train": [(i, e) for i, e in enumerate(episodes[n_val:])],
                                    "val": [(i, e) for i, e in enumerate(episodes[:n_val])]},
                    data_dir=str(staging), description=_description(domain),
                    disable_shuffling=True,
                )
            entries.append({
                "name": name, "format": "rlds", "path": f"{name}/1.0.0", "split": "train", "weight": 1.0,
                "domain": domain, "action_key": "action", "state_key": "observation/state",
                "image_keys": ["observation/image"], "gripper_dims": [6], "position_dims": [0, 1, 2],
            })
        (staging / "config.yaml").write_text(yaml.safe_dump(_config(entries), sort_keys=False))
    return out / "config.yaml"


def _description(domain: str) -> str:
    return f"stepnorm sample mixture (revision {SAMPLE_REVISION}): {domain} pick-and-place"


def _is_current(out: Path) -> bool:
    """``out`` already holds this revision of the sample (its datasets and config)."""
    if not (out / "config.yaml").is_file():
        return False
    for name, (domain, *_) in SAMPLE_DATASETS.items():
        info = out / name / "1.0.0" / "dataset_info.json"
        if not info.is_file() or json.loads(info.read_text()).get("description") != _description(domain):
            return False
    return True


def _config(entries: list[dict]) -> dict:
    return {
        "horizon": 8,
        "delta_mask": [True] * 6 + [False],
        "quantiles": [0.01, 0.5, 0.99],
        "weighting": "samples",
        "normalization": {"action": {"mode": "q01_q99", "mask": [True] * 6 + [False]},
                          "state": {"mode": "mean_std"}},
        "model": {"image_input": "uint8"},
        "datasets": entries,
    }
