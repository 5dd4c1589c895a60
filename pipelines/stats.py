"""The statistics pipeline: data files -> values cache -> per-dataset accumulators -> mixture -> artifact.

Stage 1 (Beam, only for read tasks whose values are not cached) reads each read task (an RLDS
shard read, a LeRobot data file) once into the values cache (``stepnorm.values``; imported from
``stepnorm.pipelines.stats_beam`` only when something must be read). Stage 2 (local by default; on
the Beam runner for large runs, see ``run_stats``) computes every statistic from the cached values
in one canonical order (tasks in order, episodes in file
order; a LeRobot dataset's file entries assembled into its episodes, ``sources.cached_episodes``),
so the artifact is the same bytes (apart from ``created``) whatever the runner, the worker count,
the bundle split or the cache state.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stepnorm import outputs
from stepnorm.artifact import STATS_FILE, artifact_from_accumulators, fill_artifact
from stepnorm.config import Config
from stepnorm.errors import InputDataError
from stepnorm.paths import is_remote
from stepnorm.samples import DatasetSample
from stepnorm.sources import (cached_episodes, check_widths, dataset_fingerprint, needed_tasks, read_tasks,
                              task_values_keys)
from stepnorm.sources.rlds import plans_in
from stepnorm.sources.transforms import apply_transforms, build_transforms
from stepnorm.stats import ChunkStatsAccumulator
from stepnorm.values import ValuesCache

# Numeric values (action and state entries, transforms applied) of one dataset held in memory
# between the accumulation and the exact-quantile passes (512 MB of float64); a larger dataset's
# passes read its values cache entries again. The passes see the same episodes either way.
KEEP_NUMERIC_VALUES = 1 << 26
# Steps offered to the validators' sample at once (``DatasetSample.add_episodes``).
SAMPLE_BATCH_STEPS = 1 << 16
# Steps of one dataset accumulated by one call, at most (a part; ``part_steps``,
# ``episode_parts``): stage 2 on Beam spreads a dataset's parts over the workers, and in-process
# the parts' moments are accumulated one after the other and merged in the same order, so the
# bytes do not depend on where they ran. A part on a worker builds its own bracketing samples
# (about 3 s of a 5M-step DROID-like set's 16 s at H=50 with a delta_mask), hence parts this large.
PART_STEPS = 1 << 22


@dataclass
class StatsResult:
    stats_path: Path
    status: dict[str, str]  # dataset -> "reused" (values from the cache) | "computed" (data read)
    seconds: float


def read_into_cache(cfg: Config, items: list, beam_args: Sequence[str], cache: ValuesCache,
                    log=print) -> None:
    """Read ``items`` ((cache key, ReadTask) pairs) with Beam into ``cache``; every task's counts
    are checked against what reached the cache (``stepnorm.pipelines.stats_beam.read_values``)."""
    from stepnorm.pipelines.stats_beam import read_values

    read_values(cfg, items, beam_args, str(cache.root), log)


def dataset_episodes(ds, cache: ValuesCache, tasks: list):
    """A callable giving one dataset's episodes from its cached values (``tasks``: its (ReadTask,
    cache key) pairs in task order), transforms applied: what stage 2 computes from, in its one
    order, wherever it runs."""
    transforms = build_transforms(ds.transforms, f"datasets.{ds.name}.transforms")

    def episodes():
        for raw in cached_episodes(ds, tasks, cache):
            yield apply_transforms(raw, transforms) if transforms else raw

    return episodes


def part_count(steps: int) -> int:
    """How many parts a dataset of ``steps`` cached steps is cut into: ``ceil(steps / PART_STEPS)``."""
    return max(1, -(-steps // PART_STEPS))


def part_steps(steps: int) -> int:
    """The steps of each part (``episode_parts``) of a dataset of ``steps`` cached steps: its
    ``part_count`` parts made about equal."""
    return -(-steps // part_count(steps)) if steps > 0 else PART_STEPS


def episode_parts(episodes, steps_per_part: int):
    """``(part, episode)`` for ``episodes`` in order: a new part starts at the first episode
    boundary once the current part holds ``steps_per_part`` steps (so a dataset of ``S`` steps
    has at most ``S // steps_per_part + 1`` parts, ``max_parts``)."""
    part, steps = 0, 0
    for ep in episodes:
        if steps >= steps_per_part:
            part, steps = part + 1, 0
        steps += len(ep.action)
        yield part, ep


def max_parts(steps: int, steps_per_part: int) -> int:
    """An upper bound of ``episode_parts``' parts for a dataset of at most ``steps`` steps."""
    return steps // steps_per_part + 1


def merge_part(total, part: ChunkStatsAccumulator, samples: bool = True) -> ChunkStatsAccumulator:
    """The dataset's accumulator so far (``total``, None before the first part) with the next
    ``part``: parts merged in part order, wherever they were computed (``samples``: see
    ``ChunkStatsAccumulator.merge``)."""
    part.flush()
    return part if total is None else total.merge(part, samples)


def offer_to_sample(ds, sample: DatasetSample, offered: list, ep=None) -> None:
    """Offer ``ep`` (None: what is left) to the validators' sample, in batches of
    ``SAMPLE_BATCH_STEPS`` steps (``offered``: ``[steps, episodes]`` waiting; the same sample)."""
    if ep is not None:
        offered[1].append((ep.index, ep.action, ep.state, ep.images))
        offered[0] += len(ep.action)
    if ep is None or offered[0] >= SAMPLE_BATCH_STEPS:
        sample.add_episodes(ds.name, offered[1])
        offered[:] = [0, []]


def accumulate_values(cfg: Config, ds, cache: ValuesCache, tasks: list,
                      room: list[int] | None = None) -> tuple[ChunkStatsAccumulator, DatasetSample]:
    """One dataset's accumulator and validators' sample from its cached values (``tasks``: its
    (ReadTask, cache key) pairs in task order), transforms applied; ``acc.data`` gives the values
    again (exact quantiles): held in memory if they fit in ``room`` (``[entries]``, shared by the
    datasets of a run and reduced by what this one holds; default ``KEEP_NUMERIC_VALUES``), else
    read from the cache again.

    The episodes' moments are accumulated by parts (``episode_parts``, ``part_steps``) merged in
    part order, as ``stage2_on_beam`` computes them one part per worker: the same bytes. Here the
    parts continue one bracketing sample and one validators' sample (bottom-k samples: the same
    however the episodes are split), so a part costs no sample of its own."""
    episodes = dataset_episodes(ds, cache, tasks)
    room = [KEEP_NUMERIC_VALUES] if room is None else room
    kept, held = [], 0
    spec, shared = cfg.accumulator_spec(), {}
    sample, offered = DatasetSample(), [0, []]
    total, acc, at = None, None, -1
    for number, ep in episode_parts(episodes(), part_steps(cached_steps(ds, cache, tasks))):
        if number != at:
            if acc is not None:
                total = merge_part(total, acc, samples=False)
            acc, at = ChunkStatsAccumulator(spec, ds.name, shared_samples=shared), number
        acc.add_episode(ep.action, ep.state, source=ep.source)
        offer_to_sample(ds, sample, offered, ep)
        if kept is not None:
            held += ep.action.size + (ep.state.size if ep.state is not None else 0)
            if held > room[0]:
                kept = None  # too large to hold: the exact passes read the cache again
            else:
                kept.append((ep.action, ep.state))
    total = merge_part(total, acc if acc is not None else ChunkStatsAccumulator(spec, ds.name), samples=False)
    offer_to_sample(ds, sample, offered)
    for key, group in total.groups.items():  # the dataset's one sample per group
        group.samples = shared.get(key, group.samples)
    total.shared_samples = None
    if kept is not None:
        room[0] -= held
    total.data = episodes if kept is None else kept
    return total, sample


STAGE2_CHOICES = ("auto", "local", "beam")


def parallel_runner(beam_args: Sequence[str]) -> bool:
    """True when ``beam_args`` run Beam on more than this one process: a ``--runner`` (Dask, a
    portable job service, Dataflow, Flink, Spark) or ``multi_processing`` with 2+ workers."""
    from stepnorm.pipelines.runners import runner_name

    if runner_name(beam_args) is not None:
        return True
    args = list(beam_args)
    joined = " ".join(args).replace("=", " ").split()
    mode = joined[joined.index("--direct_running_mode") + 1] if "--direct_running_mode" in joined[:-1] else None
    workers = joined[joined.index("--direct_num_workers") + 1] if "--direct_num_workers" in joined[:-1] else "1"
    return mode == "multi_processing" and workers.isdigit() and int(workers) > 1


def cached_steps(ds, values: ValuesCache, tasks: list) -> int:
    """Dataset ``ds``'s steps as cached (``tasks``: its (ReadTask, cache key) pairs; its entries'
    rows: at least the steps it has)."""
    return sum(values.counts(key, ds.name)[1] for _, key in tasks)


def numeric_entries(cfg: Config, values: ValuesCache, tasks: dict) -> int:
    """The run's numeric values as cached (steps times action and state widths, before transforms)."""
    from stepnorm.sources import declared_widths

    total = 0
    for ds in cfg.datasets:
        action, state = declared_widths(ds, values)
        total += cached_steps(ds, values, tasks[ds.name]) * (action + (state or 0))
    return total


def run_stats(cfg: Config, out_dir: str | os.PathLike, beam_args: Sequence[str] = (), force: bool = False,
              log=print, cache: str | os.PathLike | None = None, stage2: str = "auto") -> StatsResult:
    """Compute every dataset's statistics (reading only the read tasks whose values are not in
    the values cache ``cache``; with ``force``, all of them) and write the artifact to ``out_dir``.

    ``out_dir`` must be absent, empty or an earlier stats artifact, and not inside an input; it is
    locked while the run lasts and replaced in one atomic step (see ``stepnorm.outputs``).

    ``stage2``: where the statistics are computed from the cached values: ``local`` (this
    process), ``beam`` (the Beam runner of ``beam_args``: each dataset's parts' accumulators
    and their share of the exact-quantile passes on the workers;
    ``stepnorm.pipelines.stats_beam.stage2_on_beam``), or ``auto``: ``beam`` when the runner runs
    more than this process (``parallel_runner``), the run has more than one unit of work (a
    dataset's part of ``PART_STEPS`` steps, ``episode_parts``) and its numeric values exceed what
    one process holds in memory (``KEEP_NUMERIC_VALUES``: in-process, the passes would read the
    cache again too), else ``local``. The artifact is the same bytes either way.
    """
    if stage2 not in STAGE2_CHOICES:
        raise ValueError(f"stage2 must be one of {STAGE2_CHOICES}, got {stage2!r}")
    t0 = time.monotonic()
    values = ValuesCache(cache)
    # RLDS shard plans and declared widths remembered beside the values (a local cache), so a run
    # whose values are all cached does not import TFDS
    plans = None if is_remote(values.root) else values.plans_dir
    with outputs.writing(out_dir, "stats", config_inputs(cfg)) as staging, plans_in(plans):
        out = staging.parent / Path(out_dir).resolve().name
        tasks = {}
        for ds in cfg.datasets:
            # a cached entry's steps (its file's rows, for max_frames); None: the file is to be read
            steps = (lambda key, name=ds.name: None if force or not values.has(key) else values.counts(key, name)[1])
            tasks[ds.name] = needed_tasks(ds, task_values_keys(ds), steps)
        fingerprints = {ds.name: dataset_fingerprint(cfg, ds) for ds in cfg.datasets}
        todo, seen = [], set()
        for ds in cfg.datasets:
            for task, key in tasks[ds.name]:
                if (force or not values.has(key)) and key not in seen:
                    todo.append((key, task))
                    seen.add(key)
        read = [ds.name for ds in cfg.datasets if any(t.dataset == ds.name for _, t in todo)]
        status = {ds.name: "computed" if ds.name in read else "reused" for ds in cfg.datasets}
        # masks and dim indices against the declared widths, before any work (from the cache where
        # the values are cached: a run that reads nothing opens no data file)
        check_widths(cfg, cache=None if force else values)
        _warn_metadata(cfg, read)
        if todo:
            read_into_cache(cfg, todo, beam_args, values, log)
        on_beam = stage2 == "beam" or (
            stage2 == "auto" and parallel_runner(beam_args) and numeric_entries(cfg, values, tasks) > KEEP_NUMERIC_VALUES
            and sum(part_count(cached_steps(ds, values, tasks[ds.name])) for ds in cfg.datasets) > 1)
        if on_beam:
            from stepnorm.pipelines.stats_beam import stage2_on_beam

            with stage2_on_beam(cfg, tasks, beam_args, str(values.root), log) as (accs, samples):
                _check_counts(cfg, accs, read)
                doc = artifact_from_accumulators(cfg, accs, fingerprints)
        else:
            accs, samples, room = {}, {}, [KEEP_NUMERIC_VALUES]
            for ds in cfg.datasets:
                accs[ds.name], samples[ds.name] = accumulate_values(cfg, ds, values, tasks[ds.name], room)
            _check_counts(cfg, accs, read)
            doc = artifact_from_accumulators(cfg, accs, fingerprints)
        blob_keys = {name: f"{name}-{fingerprints[name]}" for name in accs}
        fill_artifact(staging, doc, {blob_keys[n]: a.to_bytes() for n, a in accs.items()},
                      {blob_keys[n]: s.to_bytes() for n, s in samples.items()})
    for ds in cfg.datasets:
        acc = accs[ds.name]
        n_read = sum(1 for _, t in todo if t.dataset == ds.name)
        note = "  (extract reused)" if status[ds.name] == "reused" else (
            f"  ({n_read} of {len(tasks[ds.name])} read tasks read)" if n_read < len(tasks[ds.name]) else "")
        log(f"  {ds.name:32s} {status[ds.name]:8s} {acc.num_episodes:7d} episodes {acc.num_steps:9d} steps{note}")
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
        if ds.name not in computed:
            continue
        got = accs[ds.name].num_episodes
        if got == 0:
            raise InputDataError(ds.path, f"dataset {ds.name!r} has no episodes in split {ds.split!r}")
        if ds.format != "rlds":
            continue
        expected = sum(t.take for t in read_tasks(ds))
        if got != expected:
            raise InputDataError(ds.path, f"read {got} episodes but split {ds.split!r} holds {expected}")


__all__ = ["PART_STEPS", "StatsResult", "accumulate_values", "cached_steps", "dataset_episodes", "episode_parts", "max_parts", "part_count", "part_steps", "numeric_entries", "parallel_runner", "read_into_cache", "run_stats", "STATS_FILE"]
