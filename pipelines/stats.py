"""The statistics pipeline: episodes -> per-dataset accumulators -> mixture -> artifact.

Datasets whose fingerprint matches a cached accumulator are not read at all; the others go through
the Beam pipeline in ``stepnorm.pipelines.stats_beam`` (imported only when something must be read).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stepnorm import outputs
from stepnorm.artifact import ACCUMULATOR_DIR, SAMPLE_DIR, STATS_FILE, fill_artifact
from stepnorm.compute import artifact_from_accumulators
from stepnorm.config import Config
from stepnorm.errors import InputDataError
from stepnorm.samples import DatasetSample
from stepnorm.sources import check_widths, dataset_fingerprint, read_tasks
from stepnorm.stats import ChunkStatsAccumulator


class DatasetSummary:
    """What the pipeline keeps per dataset: the statistics accumulator and the validators' sample."""

    def __init__(self, acc: ChunkStatsAccumulator, sample: DatasetSample):
        self.acc, self.sample = acc, sample

    def __reduce__(self):
        return (DatasetSummary.from_bytes, (self.to_bytes(),))

    def to_bytes(self) -> bytes:
        a, s = self.acc.to_bytes(), self.sample.to_bytes()
        return len(a).to_bytes(8, "little") + a + s

    @staticmethod
    def split(blob: bytes) -> tuple[bytes, bytes]:
        """``to_bytes`` output as (accumulator bytes, sample bytes), the artifact's two files."""
        n = int.from_bytes(blob[:8], "little")
        return blob[8 : 8 + n], blob[8 + n :]

    @classmethod
    def from_parts(cls, acc: bytes, sample: bytes) -> "DatasetSummary":
        return cls(ChunkStatsAccumulator.from_bytes(acc), DatasetSample.from_bytes(sample))

    @classmethod
    def from_bytes(cls, blob: bytes) -> "DatasetSummary":
        return cls.from_parts(*cls.split(blob))


@dataclass
class StatsResult:
    stats_path: Path
    status: dict[str, str]  # dataset -> "reused" | "computed"
    seconds: float


def compute_summaries(cfg: Config, names: list[str], beam_args: Sequence[str], staging_root: Path) -> dict[str, bytes]:
    """Run the Beam pipeline over ``names``; see ``stepnorm.pipelines.stats_beam.compute_summaries``."""
    from stepnorm.pipelines.stats_beam import compute_summaries as run

    return run(cfg, names, beam_args, staging_root)


def run_stats(cfg: Config, out_dir: str | os.PathLike, beam_args: Sequence[str] = (), force: bool = False,
              log=print) -> StatsResult:
    """Compute (or reuse) every dataset's accumulator and write the artifact to ``out_dir``.

    ``out_dir`` must be absent, empty or an earlier stats artifact, and not inside an input; it is
    locked while the run lasts and replaced in one atomic step (see ``stepnorm.outputs``).
    """
    t0 = time.monotonic()
    with outputs.writing(out_dir, "stats", config_inputs(cfg)) as staging:
        out = staging.parent / Path(out_dir).resolve().name
        fingerprints = {ds.name: dataset_fingerprint(cfg, ds) for ds in cfg.datasets}
        blobs, status = {}, {}  # dataset -> (accumulator bytes, sample bytes), as the artifact stores them
        for ds in cfg.datasets:
            key = f"{ds.name}-{fingerprints[ds.name]}"
            acc_path, sample_path = out / ACCUMULATOR_DIR / f"{key}.acc", out / SAMPLE_DIR / f"{key}.sample"
            if not force and acc_path.exists() and sample_path.exists():
                blobs[ds.name] = (acc_path.read_bytes(), sample_path.read_bytes())
                status[ds.name] = "reused"
        todo = [ds.name for ds in cfg.datasets if ds.name not in blobs]
        check_widths(cfg, todo)  # masks and dim indices against the declared widths, before any reading
        _warn_metadata(cfg, todo)
        computed = compute_summaries(cfg, todo, beam_args, staging) if todo else {}
        for name, blob in computed.items():
            blobs[name] = DatasetSummary.split(blob)
            status[name] = "computed"
        accs = {name: ChunkStatsAccumulator.from_bytes(parts[0]) for name, parts in blobs.items()}
        _check_counts(cfg, accs, computed)
        doc = artifact_from_accumulators(cfg, accs, fingerprints)
        keys = {name: f"{name}-{fingerprints[name]}" for name in blobs}
        for leftover in staging.iterdir():  # the Beam hand-off directory, if the runner left one
            shutil.rmtree(leftover, ignore_errors=True)
        fill_artifact(staging, doc, {keys[n]: b[0] for n, b in blobs.items()},
                      {keys[n]: b[1] for n, b in blobs.items()})
    for ds in cfg.datasets:
        acc = accs[ds.name]
        log(f"  {ds.name:32s} {status[ds.name]:8s} {acc.num_episodes:7d} episodes {acc.num_steps:9d} steps")
    return StatsResult(out / STATS_FILE, status, time.monotonic() - t0)


def _warn_metadata(cfg: Config, names: list[str]) -> None:
    """Print (stderr) where a LeRobot dataset's info.json disagrees with its data files."""
    from stepnorm.sources.lerobot import metadata_warnings

    for ds in cfg.datasets:
        if ds.name in names and ds.format == "lerobot":
            for warning in metadata_warnings(ds.path):
                print(f"stepnorm: warning: {warning}", file=sys.stderr)


def config_inputs(cfg: Config) -> list[str]:
    """The paths a run reads (the config file, every local dataset): no output may be inside one."""
    return [p for p in [cfg.path, *(ds.path for ds in cfg.datasets)] if p and Path(p).exists()]


def _check_counts(cfg: Config, accs, computed) -> None:
    """Counts in equal counts out: every episode the split selects reached the accumulator."""
    for ds in cfg.datasets:
        if ds.name not in computed or ds.format != "rlds":
            continue
        expected = sum(t.take for t in read_tasks(ds))
        got = accs[ds.name].num_episodes
        if got != expected:
            raise InputDataError(ds.path, f"read {got} episodes but split {ds.split!r} holds {expected}")


__all__ = ["DatasetSummary", "StatsResult", "compute_summaries", "run_stats", "STATS_FILE"]
