"""Octo / OpenVLA: load ``dataset_statistics.json`` the way they do, and (un)normalize with it.

``stepnorm export --format octo`` nests every entry under its dataset name (OpenVLA's
``norm_stats[unnorm_key]``; Octo's ``make_dataset_from_rlds(dataset_statistics=entry)`` takes one
entry). Octo's loader normalizes each *stored* action before chunking, without any delta
transform, so the exported action statistics describe the stored actions (the artifact's ``raw``
block when the config has a ``delta_mask``; the export warns then). Every chunk position uses the
same ``[D]`` vector: a policy that predicts ``[B, H, D]`` chunks unnormalizes all of them with it.

``normalizer(entry)`` is stepnorm's one normalizer (``stepnorm.normalize``) over an entry's
statistics and mask: ``bounds`` (Octo's BOUNDS / OpenVLA's BOUNDS_Q99, on ``p01``/``p99``, clipped)
or ``normal`` (mean/std). On constant dims it gives 0 like OpenVLA (Octo's own bounds give -1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stepnorm.errors import ArtifactError
from stepnorm.normalize import Normalizer

MODES = {"bounds": "q01_q99", "normal": "mean_std"}


def load_statistics(path: str | Path, dataset: str | None = None) -> dict[str, Any]:
    """One dataset's entry (``action``, ``proprio``, counts) with numpy arrays.

    ``dataset`` None works only when the file holds exactly one name, as OpenVLA's ``unnorm_key``.
    """
    file = Path(path)
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(str(file), f"cannot read Octo dataset statistics ({exc})") from None
    if not isinstance(doc, dict) or not doc or "action" in doc:
        raise ArtifactError(str(file), "expected statistics nested under dataset names ({name: {action, ...}}); "
                                       "re-export with `stepnorm export --format octo`")
    if dataset is None:
        if len(doc) != 1:
            raise ArtifactError(str(file), f"statistics of {len(doc)} datasets; choose one of {sorted(doc)}")
        dataset = next(iter(doc))
    if dataset not in doc:
        raise ArtifactError(str(file), f"no dataset {dataset!r} (have {sorted(doc)})")
    entry = doc[dataset]
    return {k: ({f: np.asarray(v) for f, v in entry[k].items()} if isinstance(entry[k], Mapping) else entry[k])
            for k in entry}


def normalizer(entry: Mapping[str, Any], key: str = "action", mode: str = "bounds", clip: bool | None = None
               ) -> Normalizer:
    """stepnorm's ``Normalizer`` over ``entry[key]`` (``action`` or ``proprio``) and its mask.

    ``bounds`` clips to [-1, 1] as Octo and OpenVLA do; ``normal`` does not clip by default.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    stats = entry[key]
    block = {"mean": stats["mean"], "std": stats["std"], "min": stats["min"], "max": stats["max"],
             "q01": stats["p01"], "q99": stats["p99"]}
    mask = stats.get("mask")
    return Normalizer(block, None, mode=MODES[mode], mask=None if mask is None else np.asarray(mask, bool), clip=clip)


def unnormalize_chunk(chunk, entry: Mapping[str, Any], mode: str = "bounds") -> np.ndarray:
    """A predicted chunk ``[..., H, D]`` (or one action ``[D]``) back to stored-action units."""
    return normalizer(entry, "action", mode).unnormalize(np.asarray(chunk))
