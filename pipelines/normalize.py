"""The Beam normalize pipeline: source episodes -> pre-normalized TFDS datasets (SPEC section 5).

Per config dataset, one TFDS dataset directory ``OUT/<name>/<version>/`` holding every split the
config lists (``splits: [train, val]``, or the one ``split``), all normalized with the statistics
of the statistics split (``stats_split``, default the first), as Octo and dlimp load a dataset's
train and val splits from one builder. Every RLDS episode keeps its original ``tf.train.Example`` features untouched (images
stay the original encoded bytes); the pipeline adds, per step:

- ``steps/action_chunk`` float32 ``[H, D]``: the chunk ``A_t[k] = a_{t+k}`` (delta dims relative
  to ``s_t``), padded by repeating the last action, normalized with the statistics of the config's
  per-timestep decision (``normalization.action.per_timestep``: ``per_timestep`` rows, or the
  ``pooled`` / ``global`` vector), recorded as ``action_statistics`` in MANIFEST.json and in each
  dataset's TFDS metadata;
- ``steps/action_chunk_valid`` bool ``[H]``: False on padded positions;
- ``steps/observation/state_normalized`` float32 ``[Ds]`` when ``normalization.state`` is set.

The stored ``steps/action`` stays as it was; the chunk is built from the action after the dataset's
transforms (the action the statistics describe), so all datasets' chunks share one action space.

LeRobot datasets are written as RLDS too (stepnorm.writers.lerobot), plus the fields above.

What an episode becomes (normalized fields, the tf.Example bytes, the TFDS features and metadata)
is library code in stepnorm.writers, importable without Beam; this module plans the shards, runs
the shard writer in Beam, checks the counts and publishes.

Sharding is fixed by the input, not by the runner: an RLDS output shard is exactly one input
shard read (same episodes, same order), a LeRobot dataset is cut into contiguous runs of episodes.
Each Beam element writes its shards whole, so the output is byte-identical across runs, runners
and worker counts, and no episode (with its images) goes through a shuffle.

Completeness and atomicity: every shard writer reports how many episodes it wrote; the launcher
checks them against the split's ``dataset_info.json`` and the statistics' episode counts before
anything becomes visible. Everything is assembled in a hidden staging directory beside ``OUT`` and
published in one atomic step, with ``MANIFEST.json`` written last inside it (``stepnorm.outputs``:
``OUT`` must be absent, empty or an earlier normalized output, and is locked while the job runs). A
killed job leaves only that hidden directory; the next writer of ``OUT`` removes it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import apache_beam as beam

from stepnorm import __version__, outputs
from stepnorm.artifact import ACCUMULATOR_DIR, SAMPLE_DIR, Artifact, read_artifact, staleness
from stepnorm.config import Config, DatasetConfig, check_output_names, output_split_name
from stepnorm.errors import ConfigError, InputDataError, StaleArtifactError
from stepnorm.paths import is_remote
from stepnorm.pipelines.stats_beam import _progress_bar, run_beam
from stepnorm.sources import ReadTask, read_task, read_tasks
from stepnorm.writers import (ACTION_CHUNK, ACTION_CHUNK_VALID, STATE_NORMALIZED, EpisodeNormalizer, ExampleEncoder,
                              added_features, extend_features, lerobot_episodes, lerobot_features, lerobot_layout,
                              shard_name, write_metadata)

MANIFEST_FILE = "MANIFEST.json"
MANIFEST_FORMAT = "stepnorm.normalized"
STATS_SUBDIR = "stats"
LEROBOT_VERSION = "1.0.0"
# LeRobot episodes carry no images, so shards are cut by size: about this many bytes each.
LEROBOT_SHARD_BYTES = 256 << 20
_RECEIPTS = ".receipts"


# -- the Beam part --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WriteJob:
    """One read task and the output shards of one split its episodes fill, in order.

    ``shard_sizes[j]`` episodes go to output shard ``first_shard + j`` of ``split``.
    """

    dataset: str
    split: str  # the output split name
    task: ReadTask
    first_shard: int
    shard_sizes: tuple[int, ...]


@dataclass
class DatasetPlan:
    """Where and how one config dataset is written (every listed split, one TFDS dataset)."""

    name: str
    rel_dir: str  # "<name>/<version>" under the output
    splits: dict[str, str]  # output split name -> the source split string it reads, in order
    features_json: dict
    added_json: dict
    lerobot_layout: dict | None
    jobs: list[WriteJob]
    expected_episodes: dict[str, int]  # per output split

    def shard_name(self, split: str, index: int) -> str:
        return shard_name(self.name, split, index, self.num_shards(split))

    def num_shards(self, split: str) -> int:
        return sum(len(j.shard_sizes) for j in self.jobs if j.split == split)

    def shard_sizes(self, split: str) -> list[int]:
        return [size for job in self.jobs if job.split == split for size in job.shard_sizes]


class WriteShardsFn(beam.DoFn):
    """WriteJob -> receipts; writes the job's shards (whole TFRecord files) into the staging dir."""

    def __init__(self, cfg: Config, artifact_doc: dict, plans: dict[str, DatasetPlan], staging: str):
        self.cfg, self.artifact_doc, self.plans, self.staging = cfg, artifact_doc, plans, staging

    def setup(self):
        artifact = Artifact(self.artifact_doc)
        self.by_name = {ds.name: ds for ds in self.cfg.datasets}
        self.encoders = {name: ExampleEncoder(self.by_name[name], EpisodeNormalizer.build(self.cfg, artifact, name),
                                              plan.features_json, plan.added_json, plan.lerobot_layout)
                         for name, plan in self.plans.items()}
        self.progress = _progress_bar("normalizing")
        self.written = beam.metrics.Metrics.counter("stepnorm", "episodes_written")

    def teardown(self):
        self.progress.close()

    def process(self, job: WriteJob):
        from apache_beam.io.filesystems import CompressionTypes, FileSystems
        from apache_beam.io.tfrecordio import _TFRecordUtil

        plan = self.plans[job.dataset]
        records = self._records(plan, job)
        for j, size in enumerate(job.shard_sizes):
            index = job.first_shard + j
            path = FileSystems.join(self.staging, plan.rel_dir, plan.shard_name(job.split, index))
            count = num_bytes = 0
            # Beam's TFRecord framing (as the reader uses): no TensorFlow start-up in the workers.
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                for record in records:
                    _TFRecordUtil.write_record(handle, record)
                    count += 1
                    num_bytes += len(record) + 16  # length, its CRC, the data CRC
                    self.progress.update(1)
                    self.written.inc()
                    if count == size:
                        break
            yield self._receipt(plan, job.split, index, count, num_bytes)
        surplus = sum(1 for _ in records)
        if surplus:
            raise InputDataError(job.task.locator, f"read {surplus} more episodes than the split holds")

    def _records(self, plan: DatasetPlan, job: WriteJob) -> Iterator[bytes]:
        ds, encoder = self.by_name[job.dataset], self.encoders[job.dataset]
        if plan.lerobot_layout is None:
            for episode in read_task(ds, job.task, keep_serialized=True):
                yield encoder.encode(episode)
            return
        for raw, episode in lerobot_episodes(ds):
            yield encoder.encode(episode, raw)

    def _receipt(self, plan: DatasetPlan, split: str, index: int, count: int, num_bytes: int) -> dict:
        from apache_beam.io.filesystems import FileSystems

        receipt = {"dataset": plan.name, "split": split, "shard": index, "episodes": count, "bytes": num_bytes}
        # Receipts are files, not pipeline output, so every runner hands them back the same way.
        path = FileSystems.join(self.staging, plan.rel_dir, _RECEIPTS, f"{split}-{index:05d}.json")
        with FileSystems.create(path) as handle:
            handle.write(json.dumps(receipt).encode())
        return receipt


# -- planning -------------------------------------------------------------------------------------
def _plan(cfg: Config, artifact: Artifact, ds: DatasetConfig) -> DatasetPlan:
    block = artifact.block(ds.name)
    action_dim = len(block["action"]["global"]["mean"])
    state_dim = len(block["state"]["global"]["mean"]) if "state" in cfg.normalization and "state" in block else None
    if "state" in cfg.normalization and state_dim is None:
        raise ConfigError(cfg.path, f"normalization.state is set but dataset {ds.name!r} has no state statistics "
                                    f"(set its state_key)")
    added = added_features(cfg.horizon, action_dim, state_dim)
    splits = {output_split_name(s): s for s in ds.output_splits}
    expected = int(block["num_episodes"])
    if ds.format == "rlds":
        from stepnorm.sources.rlds import rlds_builder

        builder = rlds_builder(ds.path)
        features = extend_features(builder.info.features, added, ds.path)
        jobs, counts = [], {}
        for out_split, source_split in splits.items():
            tasks = read_tasks(dataclasses.replace(ds, split=source_split))
            jobs += [WriteJob(ds.name, out_split, t, i, (t.take,)) for i, t in enumerate(tasks)]
            counts[out_split] = sum(t.take for t in tasks)
        in_split = counts[output_split_name(ds.split)]
        if in_split != expected:
            raise InputDataError(ds.path, f"split {ds.split!r} holds {in_split} episodes but the statistics "
                                          f"counted {expected}")
        return DatasetPlan(ds.name, f"{ds.name}/{builder.info.version}", splits, features.to_json(), added.to_json(),
                           None, jobs, counts)
    raw, _ = next(lerobot_episodes(ds))
    layout = lerobot_layout(ds, raw)
    features = lerobot_features(ds, raw, added)
    est_bytes = int(block["num_steps"]) * 4 * (cfg.horizon * (action_dim + 1) + 2 * action_dim + 2 * (state_dim or 0)
                                               + len(layout) + 4)
    n_shards = max(1, min(expected, -(-est_bytes // LEROBOT_SHARD_BYTES)))
    sizes = tuple((i + 1) * expected // n_shards - i * expected // n_shards for i in range(n_shards))
    (out_split,) = splits  # config validation allows one split for LeRobot
    # One job reads the whole dataset (lerobot_episodes), so its task names the dataset directory.
    job = WriteJob(ds.name, out_split, ReadTask(ds.name, ds.path), 0, sizes)
    return DatasetPlan(ds.name, f"{ds.name}/{LEROBOT_VERSION}", splits, features.to_json(), added.to_json(),
                       {k: list(v) for k, v in layout.items()}, [job], {out_split: expected})


def check_fresh(cfg: Config, artifact: Artifact) -> None:
    """StaleArtifactError unless the artifact was computed from this config and these datasets."""
    found = staleness(cfg, artifact.doc)
    if found.stale:
        raise StaleArtifactError(str(artifact.path), f"statistics are stale for {cfg.path} ({found.describe()}); "
                                                     f"rerun `stepnorm stats`")


@dataclass
class NormalizeResult:
    out_dir: Path
    datasets: dict[str, Path]  # name -> TFDS dataset directory
    episodes: dict[str, int]  # name -> episodes written, over all its splits
    seconds: float


def run_normalize(cfg: Config, stats_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  beam_args: Sequence[str] = (), log=print) -> NormalizeResult:
    """Write every config dataset, normalized, as a TFDS dataset under ``out_dir`` (atomically).

    Raises StaleArtifactError when the statistics do not match ``cfg`` and its datasets,
    InputDataError when an episode count does not match, ConfigError for an unusable config.
    """
    t0 = time.monotonic()
    if is_remote(out_dir):
        raise ConfigError(None, f"--out {out_dir}: normalize writes to a local directory (atomic rename)")
    if "action" not in cfg.normalization:
        raise ConfigError(cfg.path, "normalize needs normalization.action (mode, mask, clip)")
    if any(ds.name == STATS_SUBDIR for ds in cfg.datasets):
        raise ConfigError(cfg.path, f"a dataset named {STATS_SUBDIR!r} would clash with the artifact copy in the output")
    from stepnorm.pipelines.stats import config_inputs

    check_output_names(cfg)
    artifact = read_artifact(stats_dir)  # one read: this snapshot is what is applied and bundled
    check_fresh(cfg, artifact)
    plans = plan_datasets(cfg, artifact)
    with outputs.writing(out_dir, "normalized", [*config_inputs(cfg), artifact.directory]) as staging:
        out = staging.parent / Path(out_dir).resolve().name
        prepare_staging(plans, staging)
        run_beam(beam_args, lambda p: p | "WriteNormalized" >> WriteNormalized(cfg, artifact, plans, str(staging)))
        episodes = finish_datasets(cfg, artifact, plans, staging)
        _copy_artifact(artifact, staging / STATS_SUBDIR)
        _write_manifest(cfg, artifact, plans, episodes, staging)
    for ds in cfg.datasets:
        per_split = ", ".join(f"{n} {split}" for split, n in episodes[ds.name].items())
        log(f"  {ds.name:32s} {per_split:>14s} episodes -> {out / plans[ds.name].rel_dir}")
    totals = {name: sum(counts.values()) for name, counts in episodes.items()}
    return NormalizeResult(out, {n: out / p.rel_dir for n, p in plans.items()}, totals, time.monotonic() - t0)


def _copy_artifact(artifact: Artifact, target: Path) -> None:
    """Bundle the statistics that were applied: the stats.json bytes read at the start (a concurrent
    ``stepnorm stats`` cannot change them) and the accumulator/sample files named by its fingerprints."""
    target.mkdir()
    (target / "stats.json").write_bytes(artifact.raw)
    for sub, suffix in ((ACCUMULATOR_DIR, "acc"), (SAMPLE_DIR, "sample")):
        for name, block in artifact.doc["datasets"].items():
            source = artifact.directory / sub / f"{name}-{block['fingerprint']}.{suffix}"
            if source.is_file():
                (target / sub).mkdir(exist_ok=True)
                shutil.copyfile(source, target / sub / source.name)
    outputs.write_marker(target, "stats")


class WriteNormalized(beam.PTransform):
    """The shard writer of ``stepnorm normalize`` as a PTransform: pipeline root -> one receipt per
    output shard written (whole TFRecord files) under ``staging``.

    ``plans`` (``plan_datasets``) fixes every shard's episodes before the pipeline runs, so the
    output is the same bytes on every runner; ``finish_datasets`` then checks the receipts (counts
    in == counts out) and writes the TFDS metadata. ``run_normalize`` adds the output's lock,
    staging, artifact copy, MANIFEST.json and atomic publication around these three steps.
    """

    def __init__(self, cfg: Config, artifact: Artifact, plans: dict[str, "DatasetPlan"], staging: str):
        super().__init__()
        self.cfg, self.artifact, self.plans, self.staging = cfg, artifact, plans, staging

    def expand(self, root):
        jobs = [job for plan in self.plans.values() for job in plan.jobs]
        return (root
                | "Jobs" >> beam.Create(jobs)
                | "Spread" >> beam.Reshuffle()
                | "Write" >> beam.ParDo(WriteShardsFn(self.cfg, self.artifact.doc, self.plans, self.staging)))


def plan_datasets(cfg: Config, artifact: Artifact) -> dict[str, "DatasetPlan"]:
    """Every config dataset's write plan (reads metadata and, for LeRobot, the first episode)."""
    return {ds.name: _plan(cfg, artifact, ds) for ds in cfg.datasets}


def prepare_staging(plans: dict[str, "DatasetPlan"], staging: Path) -> None:
    """The directories the shard writers write into."""
    for plan in plans.values():
        (Path(staging) / plan.rel_dir / _RECEIPTS).mkdir(parents=True)


def finish_datasets(cfg: Config, artifact: Artifact, plans: dict[str, "DatasetPlan"],
                    staging: Path) -> dict[str, dict[str, int]]:
    """After ``WriteNormalized`` ran: check each dataset's receipts and write its TFDS metadata;
    returns the episodes written per dataset and output split."""
    return {ds.name: _finish_dataset(cfg, ds, plans[ds.name], Path(staging), artifact) for ds in cfg.datasets}


def _finish_dataset(cfg: Config, ds: DatasetConfig, plan: DatasetPlan, staging: Path,
                    artifact: Artifact) -> dict[str, int]:
    """Check the receipts (counts in == counts out) and write the TFDS metadata; returns the
    episodes written per output split."""
    data_dir = staging / plan.rel_dir
    receipts = {}
    for file in (data_dir / _RECEIPTS).glob("*.json"):
        receipt = json.loads(file.read_text())
        receipts[(receipt["split"], receipt["shard"])] = receipt
    splits, written = {}, {}
    for split, source_split in plan.splits.items():
        expected_sizes = plan.shard_sizes(split)
        for index, size in enumerate(expected_sizes):
            got = receipts.get((split, index), {}).get("episodes")
            if got != size:
                raise InputDataError(ds.path, f"split {source_split!r}: output shard {index} got {got} episodes, "
                                              f"expected {size} (episodes in != episodes out)")
        total = sum(expected_sizes)
        if total != plan.expected_episodes[split]:
            raise InputDataError(ds.path, f"split {source_split!r}: wrote {total} episodes, expected "
                                          f"{plan.expected_episodes[split]}")
        splits[split] = (expected_sizes, sum(r["bytes"] for (s, _), r in receipts.items() if s == split))
        written[split] = total
    shutil.rmtree(data_dir / _RECEIPTS)
    source = {"path": ds.path, "format": ds.format, "split": ds.split, "splits": dict(plan.splits)}
    description = (f"{ds.name}, pre-normalized by stepnorm {__version__} from {ds.path} (splits "
                   f"{', '.join(plan.splits.values())}; statistics from {ds.split}) with "
                   f"stats fingerprint {artifact.fingerprint}, normalize_with {cfg.normalize_with}.")
    kwargs = {}
    if ds.format == "rlds":
        from stepnorm.sources.rlds import rlds_builder

        info = rlds_builder(ds.path).info
        description += "\n\n" + (info.description or "")
        kwargs = {"homepage": info.homepage, "citation": info.citation}
    metadata = {"stepnorm": {"stats_fingerprint": artifact.fingerprint, "source": source, "horizon": artifact.horizon,
                             "normalize_with": cfg.normalize_with, "action_statistics": artifact.decision.as_dict()}}
    write_metadata(data_dir, plan.name, plan.features_json, splits, description, metadata, **kwargs)
    return written


def _write_manifest(cfg: Config, artifact: Artifact, plans: dict[str, DatasetPlan], episodes: dict[str, int],
                    staging: Path) -> None:
    norm = {key: dataclasses.asdict(spec) for key, spec in cfg.normalization.items()}
    doc = {
        "format": MANIFEST_FORMAT, "version": 1, "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stats": f"{STATS_SUBDIR}/stats.json", "stats_fingerprint": artifact.fingerprint,
        "horizon": cfg.horizon, "normalize_with": cfg.normalize_with, "normalization": norm,
        "delta_mask": cfg.delta_mask, "action_statistics": artifact.decision.as_dict(),
        "fields": {"action_chunk": f"steps/{ACTION_CHUNK}", "action_chunk_valid": f"steps/{ACTION_CHUNK_VALID}",
                   "state_normalized": f"steps/observation/{STATE_NORMALIZED}" if "state" in cfg.normalization else None},
        "datasets": {
            ds.name: {"path": plans[ds.name].rel_dir, "split": output_split_name(ds.split),
                      "episodes": sum(episodes[ds.name].values()),
                      "shards": sum(plans[ds.name].num_shards(s) for s in plans[ds.name].splits),
                      "source": ds.path, "source_format": ds.format, "source_split": ds.split,
                      "splits": {split: {"episodes": episodes[ds.name][split], "shards": plans[ds.name].num_shards(split),
                                         "source_split": source} for split, source in plans[ds.name].splits.items()}}
            for ds in cfg.datasets
        },
    }
    # Written last: a directory with a MANIFEST.json is complete.
    (staging / MANIFEST_FILE).write_text(json.dumps(doc, indent=1) + "\n")


__all__ = ["MANIFEST_FILE", "DatasetPlan", "NormalizeResult", "WriteJob", "WriteNormalized", "WriteShardsFn",
           "check_fresh", "finish_datasets", "plan_datasets", "prepare_staging", "run_normalize"]
