"""The Beam side of the statistics pipeline: read tasks -> per-task numeric values in the cache.

Read tasks (RLDS shard reads, LeRobot data files) are spread over workers; each task's numeric
values (actions, states before transforms, episode boundaries, one image frame per episode and
camera for the validators; a LeRobot file's episode parts) go to one entry of the values cache
(``stepnorm.values``); the
statistics are computed from those entries afterwards, in one canonical order, so they do not
depend on the runner or on how Beam split the work. Kept apart from ``stepnorm.pipelines.stats``
so a run whose datasets all come from the cache never imports Beam.

Runs with Beam's local FnApiRunner unless ``--runner`` is given (the default DirectRunner would
first try to download a Prism binary); ``--direct_running_mode multi_processing
--direct_num_workers 2`` runs the same pipeline on two processes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
import uuid
from typing import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from stepnorm.config import Config
from stepnorm.errors import InputDataError, StepnormError, UsageError
from stepnorm.pipelines.runners import close_dask_client, dask_pipeline, is_dask, runner_args, runner_name
from stepnorm.samples import pick_frame
from stepnorm.sources import ReadTask, read_task
from stepnorm.values import TaskValues, ValuesCache


def make_pipeline_options(beam_args: Sequence[str]) -> tuple[PipelineOptions, object | None]:
    """Beam options from pass-through args, and the runner to use (FnApiRunner by default).

    Beam silently discards options it does not know; a typo there would change how a job runs,
    so unknown options are a usage error.
    """
    beam_args = runner_args(beam_args)  # short runner names; the runner's options registered
    unknown = _unknown_options(tuple(beam_args))
    if unknown:
        raise UsageError(None, f"unknown Beam pipeline option(s): {', '.join('--' + u for u in unknown)}")
    options = PipelineOptions(list(beam_args))
    if runner_name(beam_args) is not None:
        return options, None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return options, FnApiRunner()


@functools.lru_cache(maxsize=16)
def _unknown_options(beam_args: tuple[str, ...]) -> list[str]:
    """Options Beam would drop (cached: each check builds Beam's whole option parser twice)."""
    options = PipelineOptions(list(beam_args))
    known = set(options.get_all_options())
    return sorted(set(options.get_all_options(retain_unknown_options=True)) - known)


def _progress_bar(label: str):
    """A tqdm bar of episodes (and steps/s) on stderr for local runs; silent when not a terminal."""
    from tqdm import tqdm

    enabled = sys.stderr.isatty() or os.environ.get("STEPNORM_PROGRESS") == "1"
    return tqdm(desc=f"{label} (pid {os.getpid()})", unit=" episodes", file=sys.stderr, disable=not enabled,
                mininterval=1.0, leave=False)


def task_key(task: ReadTask) -> str:
    """A stable file name for one read task's receipt."""
    return hashlib.sha1(repr(task).encode()).hexdigest()[:20]


class ReadTaskFn(beam.DoFn):
    """(cache key, ReadTask) -> the task's numeric values (before transforms) in the values cache.

    Each task is read by one call, its episodes in file order, so its entry is the same bytes
    whatever the runner, worker count or bundle split. With ``receipts`` (a directory) each task
    also writes a receipt once its entry is written: the episodes and steps it read and which
    worker process read them. Receipts are files, so every runner hands them back the same way,
    also where pipeline metrics do not (Beam's DaskRunner has none).
    """

    def __init__(self, cfg: Config, cache_root: str, receipts: str | None = None):
        self.cfg = cfg
        self.by_name = {ds.name: ds for ds in cfg.datasets}
        self.cache_root = cache_root
        self.receipts = receipts
        # Bound here, so they travel with the pickled DoFn to every worker (and a test can swap them).
        self.values_type, self.cache_type = TaskValues, ValuesCache

    def setup(self):
        self.progress = _progress_bar("reading")
        self.steps, self.started = 0, time.monotonic()
        self.episodes_counter = beam.metrics.Metrics.counter("stepnorm", "episodes_read")
        self.cache = self.cache_type(self.cache_root)

    def teardown(self):
        self.progress.close()

    def process(self, item):
        key, task = item
        ds = self.by_name[task.dataset]
        image_keys = ds.image_keys if ds.format == "rlds" else ()
        values = self.values_type()
        episodes = steps = 0
        started = time.time()  # wall clock: comparable across the processes of one machine
        for episode in read_task(ds, task, image_keys=image_keys, transform=False):
            episodes += 1
            steps += episode.length
            self.steps += episode.length
            self.progress.update(1)
            self.progress.set_postfix_str(f"{self.steps / max(time.monotonic() - self.started, 1e-9):.0f} steps/s",
                                          refresh=False)
            self.episodes_counter.inc()
            # Only one frame per episode and camera can enter the validators' sample: keep that one.
            episode.images = {k: [frames[pick_frame(ds.name, k, episode.index, len(frames))]]
                              for k, frames in episode.images.items() if len(frames)}
            values.add(episode)
        self.cache.write(key, values, ds.name, task.locator)
        if self.receipts is not None:
            receipt = {"dataset": task.dataset, "locator": task.locator, "key": key, "episodes": episodes,
                       "steps": steps, "worker": f"{socket.gethostname()}:{os.getpid()}", "started": started,
                       "ended": time.time()}
            with FileSystems.create(FileSystems.join(self.receipts, f"{task_key(task)}.json")) as handle:
                handle.write(json.dumps(receipt).encode())
        yield key


class ReadIntoCache(beam.PTransform):
    """Stage 1 of ``stepnorm stats`` as a PTransform: ``(cache key, ReadTask)`` pairs -> the keys
    whose values were written to the values cache at ``cache_root`` (``ReadTaskFn``), spread over
    the workers; with ``receipts``, one receipt file per read task (counts in == counts out)."""

    def __init__(self, cfg: Config, cache_root: str, receipts: str | None = None):
        super().__init__()
        self.cfg, self.cache_root, self.receipts = cfg, cache_root, receipts

    def expand(self, tasks):
        return (tasks
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadTaskFn(self.cfg, self.cache_root, self.receipts)))


def read_values(cfg: Config, items: list, beam_args: Sequence[str], cache_root: str,
                log=print) -> dict[str, tuple[int, int]]:
    """Run the Beam pipeline that reads ``items`` ((cache key, ReadTask) pairs) into the cache.

    Counts in equal counts out on every runner: every task must leave a receipt (a runner that
    drops a task fails the run), an RLDS task must have read its whole share of the split, and its
    cache entry must hold what it read. Returns each dataset's (episodes, steps) read.
    """
    by_name = {ds.name: ds for ds in cfg.datasets}
    tasks = [task for _, task in items]
    receipts = FileSystems.join(cache_root, f".receipts-{uuid.uuid4().hex}")
    FileSystems.mkdirs(receipts)
    try:
        submitted = time.time()
        run_beam(beam_args, lambda p: (
            p
            | "Tasks" >> beam.Create(items)
            | "ReadIntoCache" >> ReadIntoCache(cfg, cache_root, receipts)
        ))
        read = _check_receipts(by_name, tasks, receipts, submitted, time.time(), log)
        cache = ValuesCache(cache_root)
        for key, task in items:
            receipt = _receipt(receipts, task)
            if not cache.has(key):
                raise InputDataError(by_name[task.dataset].path, f"workers read {receipt['episodes']} episodes of "
                                                                 f"dataset {task.dataset!r} but its statistics never "
                                                                 f"arrived (the read values were dropped on the way "
                                                                 f"to the cache)")
            got = cache.counts(key, task.dataset)
            if got != (receipt["episodes"], receipt["steps"]):
                raise InputDataError(by_name[task.dataset].path,
                                     f"workers read {receipt['episodes']} episodes ({receipt['steps']} steps) but "
                                     f"{got[0]} ({got[1]} steps) reached the statistics (episodes in != episodes out)")
        return read
    finally:
        if FileSystems.exists(receipts):
            FileSystems.delete([receipts])


# -- stage 2 on Beam -------------------------------------------------------------------------------
#
# Each dataset is cut into parts of whole episodes (``stepnorm.pipelines.stats.episode_parts``:
# defined by the episodes' lengths alone); each part's accumulator and validators' sample are
# computed by one call, on a worker, by the same code and from the same cached values in the same
# order as in-process (``stepnorm.pipelines.stats.accumulate_values``), and the launcher merges
# the parts in part order and the datasets into their mixture in config order, as in-process: the
# same bytes. The exact-quantile passes run over the parts on the workers too: counts are integers
# that add, collected entries are sorted before use, so the quantiles are the same order
# statistics. Results come back as files in a temporary directory of the values cache (on a
# cluster, a place the workers and the launcher both see), one per part: a part whose file is
# missing fails the run. A dataset's number of parts is known only from its episodes, so the
# launcher asks for ``max_parts`` of them: the call for a part past the end says so in a file
# (``.none``, holding the number of parts it found), the last part's call marks its part
# (``.last``), and the launcher checks the two agree.

STAGE2_FORMAT = 1


def _write_file(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def _read_file(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def _part_episodes(cfg: Config, cache_root: str, tasks: dict, index: int, part: int, steps_per_part: int, ends: list):
    """The episodes of part ``part`` of dataset ``index`` (``ends``: set to ``[parts found,
    last]`` once the part is over: how many parts the dataset has so far, and whether this was
    its last)."""
    from stepnorm.pipelines.stats import dataset_episodes, episode_parts

    ds = cfg.datasets[index]
    seen = 0
    for number, ep in episode_parts(dataset_episodes(ds, ValuesCache(cache_root), tasks[ds.name])(), steps_per_part):
        seen = number + 1
        if number > part:
            ends[:] = [seen, False]
            return
        if number == part:
            yield ep
    ends[:] = [seen, True]


class AccumulatePartFn(beam.DoFn):
    """(dataset index, part) -> the part's accumulator and validators' sample, written to ``out``
    (``{index}.{part}.acc`` last, the receipt), or ``{index}.{part}.none`` past the dataset's end."""

    def __init__(self, cfg: Config, cache_root: str, tasks: dict, out: str, steps_per_part: dict[int, int]):
        self.cfg, self.cache_root, self.tasks, self.out = cfg, cache_root, tasks, out
        self.steps_per_part = steps_per_part

    def process(self, element):
        from stepnorm.pipelines.stats import offer_to_sample
        from stepnorm.samples import DatasetSample
        from stepnorm.stats import ChunkStatsAccumulator

        index, part = element
        ds = self.cfg.datasets[index]
        ends: list = []
        acc, sample, offered = ChunkStatsAccumulator(self.cfg.accumulator_spec(), ds.name), DatasetSample(), [0, []]
        found_any = False
        for ep in _part_episodes(self.cfg, self.cache_root, self.tasks, index, part, self.steps_per_part[index], ends):
            found_any = True
            acc.add_episode(ep.action, ep.state, source=ep.source)
            offer_to_sample(ds, sample, offered, ep)
        name = FileSystems.join(self.out, f"{index}.{part}")
        found, last = ends
        if not found_any and not (part == 0 and found == 0):
            _write_file(name + ".none", json.dumps({"parts": max(found, 1)}).encode())
        else:
            offer_to_sample(ds, sample, offered)
            acc.flush()
            _write_file(name + ".sample", sample.to_bytes())
            if last:
                _write_file(name + ".last", json.dumps({"parts": max(found, 1)}).encode())
            _write_file(name + ".acc", acc.to_bytes())  # last: the receipt
        yield element


class PassFn(beam.DoFn):
    """(dataset index, part) -> the part's share of one exact-quantile pass (``kind`` ``count``:
    per wanted cell, entries below and at most each edge; ``collect``: the entries inside each
    interval), written to ``out``. ``request``: per dataset index, ``[((group, cell), edges or
    intervals, ranges)]``; ``budget``: the entries a count pass may keep."""

    def __init__(self, cfg: Config, cache_root: str, tasks: dict, accs: str, kind: str, request: dict, out: str,
                 steps_per_part: dict[int, int], budget: int):
        self.cfg, self.cache_root, self.tasks, self.accs = cfg, cache_root, tasks, accs
        self.kind, self.request, self.out, self.steps_per_part, self.budget = kind, request, out, steps_per_part, budget

    def process(self, element):
        from stepnorm import blobs
        from stepnorm.pipelines.stats import KEEP_NUMERIC_VALUES
        from stepnorm.stats import ChunkStatsAccumulator, exact

        index, part = element
        acc = ChunkStatsAccumulator.from_bytes(_read_file(FileSystems.join(self.accs, f"{index}.acc")))

        def episodes():
            return _part_episodes(self.cfg, self.cache_root, self.tasks, index, part, self.steps_per_part[index], [])

        # held in memory when they fit (not read from the cache again), else streamed; scanned in
        # batches of whole episodes either way (a part's millions of steps at once would build
        # temporaries of gigabytes: 1.5x slower); the same counts and entries either way
        data, held = [], 0
        for ep in episodes():
            held += ep.action.size + (ep.state.size if ep.state is not None else 0)
            if held > KEEP_NUMERIC_VALUES:
                data = episodes
                break
            data.append((ep.action, ep.state))
        ref = exact.DataRef(acc, data if callable(data) else (lambda: iter(data)))
        rid = id(ref)
        wanted = self.request[index]
        sources = [exact.Source(rid, group, cell) for (group, cell), _, _ in wanted]
        arrays = {}
        if self.kind == "count":
            # the entries inside the edges' runs come back too while they fit this part's share
            # of the budget (then no collect pass is needed), as in-process
            lt, le, kept = exact._count_pass({s: v for s, (_, v, _) in zip(sources, wanted)}, {rid: ref},
                                             {s: r for s, (_, _, r) in zip(sources, wanted) if r}, self.budget)
            for i, s in enumerate(sources):
                arrays[f"{i}.lt"], arrays[f"{i}.le"] = lt[s], le[s]
                if s in kept:
                    arrays[f"{i}.kept.bounds"], arrays[f"{i}.kept.values"] = kept[s]
        else:
            got = exact.LocalPasses.collect({s: v for s, (_, v, _) in zip(sources, wanted)}, {rid: ref})
            for i, (s, (_, intervals, _)) in enumerate(zip(sources, wanted)):
                for j, interval in enumerate(intervals):
                    arrays[f"{i}.{j}"] = np.sort(got[s][interval])
        _write_file(FileSystems.join(self.out, f"{index}.{part}.{self.kind}"), blobs.pack(arrays, STAGE2_FORMAT))
        yield element


def _run_parts(beam_args: Sequence[str], elements: list[tuple[int, int]], fn: beam.DoFn, label: str) -> None:
    """Run ``fn`` over ``elements`` ((dataset index, part) pairs) spread over the workers."""
    run_beam(beam_args, lambda p: (p | f"{label}Parts" >> beam.Create(elements)
                                   | "Spread" >> beam.Reshuffle() | label >> beam.ParDo(fn)))


def _dropped(cfg: Config, index: int, what: str) -> InputDataError:
    ds = cfg.datasets[index]
    return InputDataError(ds.path, f"stage 2 on Beam: {what} of dataset {ds.name!r} never came back from the "
                                   f"workers (the runner dropped it; parts in != parts out)")


def _collect_parts(cfg: Config, out: str, index: int, asked: int) -> int:
    """How many parts dataset ``index`` has, from its ``asked`` part calls' files in ``out``;
    every call must have left its file, and the last part and the calls past it must agree."""
    parts = None
    for part in range(asked):
        name = FileSystems.join(out, f"{index}.{part}")
        if FileSystems.exists(name + ".acc"):
            if parts is not None:
                raise _dropped(cfg, index, f"the part count (part {part} came back after the last, {parts - 1})")
            if FileSystems.exists(name + ".last"):
                parts = json.loads(_read_file(name + ".last"))["parts"]
                if parts != part + 1:
                    raise _dropped(cfg, index, f"the part count (part {part} is the last of {parts})")
        elif FileSystems.exists(name + ".none"):
            found = json.loads(_read_file(name + ".none"))["parts"]
            if parts is None or found != parts:
                raise _dropped(cfg, index, f"part {part if parts is None else parts - 1} (a later call found "
                                           f"{found} parts)")
        else:
            raise _dropped(cfg, index, f"part {part}")
    if parts is None:
        raise _dropped(cfg, index, f"the last part (asked for {asked})")
    return parts


class BeamPasses:
    """The exact-quantile passes of ``stepnorm.stats.exact.resolve`` as Beam jobs over the
    datasets' parts' cached values (``exact.data_passes``); cells named by dataset index."""

    def __init__(self, cfg: Config, cache_root: str, tasks: dict, accs: str, work: str, beam_args: Sequence[str],
                 parts: dict[int, int], steps_per_part: dict[int, int]):
        self.cfg, self.cache_root, self.tasks, self.accs = cfg, cache_root, tasks, accs
        self.work, self.beam_args, self.runs = work, list(beam_args), 0
        self.parts, self.steps_per_part = parts, steps_per_part
        self.index = {ds.name: i for i, ds in enumerate(cfg.datasets)}

    def _run(self, kind: str, by_source: dict, ranges: dict | None, refs) -> tuple[dict, dict]:
        from stepnorm import blobs
        from stepnorm.stats import exact

        request: dict[int, list] = {}
        order: dict[int, list] = {}
        for src in sorted(by_source, key=lambda s: (self.index[refs[s.ref].acc.name], s.group, s.cell)):
            index = self.index[refs[src.ref].acc.name]
            request.setdefault(index, []).append(((src.group, src.cell), by_source[src],
                                                  list((ranges or {}).get(src, ()))))
            order.setdefault(index, []).append(src)
        self.runs += 1
        out = FileSystems.join(self.work, f"{kind}-{self.runs}")
        FileSystems.mkdirs(out)
        elements = [(index, part) for index in sorted(request) for part in range(self.parts[index])]
        fn = PassFn(self.cfg, self.cache_root, self.tasks, self.accs, kind, request, out, self.steps_per_part,
                    exact.KEEP_VALUES // max(1, len(elements)))
        _run_parts(self.beam_args, elements, fn, f"Pass{self.runs}")
        results: dict[int, list] = {}
        for index, part in elements:
            path = FileSystems.join(out, f"{index}.{part}.{kind}")
            if not FileSystems.exists(path):
                raise _dropped(self.cfg, index, f"the {kind} pass of part {part}")
            with blobs.unpack(_read_file(path), STAGE2_FORMAT, "stage-2 pass result") as z:
                results.setdefault(index, []).append({name: z[name].copy() for name in z})
        return order, results

    def count(self, source_edges, refs, ranges=None):
        order, results = self._run("count", source_edges, ranges, refs)
        lt, le, kept = {}, {}, {}
        for index, sources in order.items():
            got = results[index]  # the parts', in part order
            for i, src in enumerate(sources):
                lt[src] = sum(g[f"{i}.lt"] for g in got)
                le[src] = sum(g[f"{i}.le"] for g in got)
                if all(f"{i}.kept.values" in g for g in got):  # kept by every part: all of them
                    kept[src] = (got[0][f"{i}.kept.bounds"], np.concatenate([g[f"{i}.kept.values"] for g in got]))
        return lt, le, kept

    def collect(self, intervals, refs):
        intervals = {s: sorted(v) for s, v in intervals.items()}
        order, results = self._run("collect", intervals, None, refs)
        out = {}
        for index, sources in order.items():
            got = results[index]
            for i, src in enumerate(sources):
                out[src] = {iv: np.sort(np.concatenate([g[f"{i}.{j}"] for g in got]))
                            for j, iv in enumerate(intervals[src])}
        return out


@contextlib.contextmanager
def stage2_on_beam(cfg: Config, tasks: dict, beam_args: Sequence[str], cache_root: str, log=print):
    """Stage 2 of ``stepnorm stats`` on Beam: yields ``(accumulators, samples)`` computed on the
    workers part by part, inside ``exact.data_passes`` of ``BeamPasses`` (so
    ``artifact_from_accumulators`` there runs its passes on the workers too). The temporary files
    go when it ends."""
    from stepnorm.pipelines import stats
    from stepnorm.samples import DatasetSample
    from stepnorm.stats import ChunkStatsAccumulator, exact

    values = ValuesCache(cache_root)
    work = FileSystems.join(cache_root, f".stage2-{uuid.uuid4().hex}")
    accs_dir = FileSystems.join(work, "accumulators")
    parts_dir = FileSystems.join(work, "parts")
    FileSystems.mkdirs(accs_dir)
    FileSystems.mkdirs(parts_dir)
    try:
        started = time.monotonic()
        steps = {index: stats.cached_steps(ds, values, tasks[ds.name]) for index, ds in enumerate(cfg.datasets)}
        steps_per_part = {index: stats.part_steps(n) for index, n in steps.items()}
        asked = {index: stats.max_parts(n, steps_per_part[index]) for index, n in steps.items()}
        elements = [(index, part) for index in sorted(asked) for part in range(asked[index])]
        _run_parts(beam_args, elements, AccumulatePartFn(cfg, cache_root, tasks, parts_dir, steps_per_part), "Accumulate")
        accs, samples, parts = {}, {}, {}
        for index, ds in enumerate(cfg.datasets):
            parts[index] = _collect_parts(cfg, parts_dir, index, asked[index])
            total, sample = None, None
            for part in range(parts[index]):
                name = FileSystems.join(parts_dir, f"{index}.{part}")
                total = stats.merge_part(total, ChunkStatsAccumulator.from_bytes(_read_file(name + ".acc")))
                got = DatasetSample.from_bytes(_read_file(name + ".sample"))
                sample = got if sample is None else sample.merge(got)
            accs[ds.name], samples[ds.name] = total, sample
            # the passes' workers read the merged accumulator (its dims and layout)
            _write_file(FileSystems.join(accs_dir, f"{index}.acc"), total.to_bytes())
        log(f"stage 2 on Beam: {len(cfg.datasets)} datasets in {sum(parts.values())} parts accumulated on the "
            f"workers ({time.monotonic() - started:.1f}s)")
        passes = BeamPasses(cfg, cache_root, tasks, accs_dir, work, beam_args, parts, steps_per_part)
        with exact.data_passes(passes):
            yield accs, samples
        log(f"stage 2 on Beam: {passes.runs} exact-quantile passes on the workers")
    finally:
        if FileSystems.exists(work):
            FileSystems.delete([work])


def _receipt(receipts: str, task: ReadTask) -> dict | None:
    path = FileSystems.join(receipts, f"{task_key(task)}.json")
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return json.loads(handle.read())


def _check_receipts(by_name, tasks: list[ReadTask], receipts: str, submitted: float, finished: float,
                    log) -> dict[str, tuple[int, int]]:
    """Every task's receipt is there (and an RLDS task read its whole shard slice); returns each
    dataset's (episodes, steps) read.

    Logs how the tasks were spread over worker processes and where the job's time went: from
    submitting it to the first read (start-up: workers, shipping the pipeline), reading (first read
    started to last read done; the per-episode accumulation too where the runner fuses it with the
    read, as the FnApiRunner does) and from the last read to the job's end (combining, staging).
    """
    read: dict[str, tuple[int, int]] = {}
    workers: dict[str, int] = {}
    first, last = finished, submitted
    for task in tasks:
        ds = by_name[task.dataset]
        receipt = _receipt(receipts, task)
        if receipt is None:
            raise InputDataError(task.locator, "this read task never finished on a worker (the runner dropped it, or its workers run "
                                               "another stepnorm version; tasks in != tasks out)")
        if ds.format == "rlds" and receipt["episodes"] != task.take:
            raise InputDataError(task.locator, f"read {receipt['episodes']} episodes but the split holds {task.take}")
        episodes, steps = read.get(task.dataset, (0, 0))
        read[task.dataset] = (episodes + receipt["episodes"], steps + receipt["steps"])
        workers[receipt["worker"]] = workers.get(receipt["worker"], 0) + 1
        first, last = min(first, receipt["started"]), max(last, receipt["ended"])
    spread = ", ".join(f"{w} {n}" for w, n in sorted(workers.items()))
    log(f"read {len(tasks)} tasks in {len(workers)} worker processes ({spread}); job start "
        f"{max(0.0, first - submitted):.1f}s, reading {max(0.0, last - first):.1f}s, then "
        f"{max(0.0, finished - last):.1f}s to the job's end")
    return read


def run_beam(beam_args: Sequence[str], build) -> None:
    """Build a pipeline with ``build(p)`` and run it to completion (FnApiRunner unless ``--runner``).

    A StepnormError raised inside a worker comes back as itself (or is rebuilt from the traceback
    text a portable runner relays), so the CLI prints one line.

    On Beam's DaskRunner the pipeline's shape is checked first (``dask_pipeline``) and the read
    or write tasks are spread over the cluster's workers, with a line on stdout saying how.
    """
    options, runner = make_pipeline_options(beam_args)
    dask = is_dask(runner_args(beam_args))
    result = None
    try:
        with _worker_output_kept_aside(options), _relayed_errors_kept_out():
            p = beam.Pipeline(runner=runner, options=options)
            build(p)
            if dask:
                p, split = dask_pipeline(p, options)
                print(split, flush=True)
                result = p.run(test_runner_api=False)  # dask_pipeline made the runner-API round trip
            else:
                result = p.run()
            result.wait_until_finish()
    except StepnormError:
        raise
    except Exception as exc:  # Beam wraps worker exceptions; surface ours
        inner = _find_stepnorm_error(exc) or _stepnorm_error_from_text(str(exc))
        if inner is not None:
            raise inner from None
        raise
    finally:
        if dask:
            close_dask_client(result)


@contextlib.contextmanager
def _worker_output_kept_aside(options: PipelineOptions):
    """Worker processes that Beam's multi_processing mode starts inherit stderr and log every
    start-up line and, on an error, Beam's traceback there. Point file descriptor 2 (what the
    children inherit) at a temporary file while the pipeline runs, keeping this process's own
    ``sys.stderr`` (progress, messages) where it was. ``STEPNORM_DEBUG=1`` (``--debug``) keeps the
    workers' output."""
    from apache_beam.options.pipeline_options import DirectOptions

    if (options.view_as(DirectOptions).direct_running_mode != "multi_processing"
            or os.environ.get("STEPNORM_DEBUG") == "1"):
        yield
        return
    try:
        ours = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced, e.g. captured by a test
        ours = False
    sys.stderr.flush()
    saved = os.dup(2)
    original = sys.stderr
    with tempfile.TemporaryFile() as aside:
        os.dup2(aside.fileno(), 2)
        if ours:
            sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, errors="backslashreplace")
        try:
            yield
        finally:
            if ours:
                sys.stderr.flush()
                sys.stderr.close()
                sys.stderr = original
            os.dup2(saved, 2)
            os.close(saved)


def _find_stepnorm_error(exc: BaseException) -> StepnormError | None:
    """Beam re-raises worker errors wrapped (sometimes only as text); recover the original."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StepnormError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


_RELAYED = re.compile(r"stepnorm\.errors\.(\w+): (.+?)(?: \[while running '[^']*'\])*$", re.MULTILINE)


def _stepnorm_error_from_text(text: str) -> StepnormError | None:
    """Multi-process and portable runners relay a worker's exception only as its traceback text:
    rebuild the last StepnormError named there, with its message, so the CLI still prints one line."""
    from stepnorm import errors

    found = _RELAYED.findall(text)
    if not found:
        return None
    name, message = found[-1]
    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, StepnormError)):
        return None
    error = kind.__new__(kind)
    StepnormError.__init__(error, None, message.strip())
    return error


class _RelayedStepnormError(logging.Filter):
    """Drops a job message that relays a worker's StepnormError: the launcher raises that error
    itself, and the CLI prints it as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or _stepnorm_error_from_text(record.getMessage()) is None


@contextlib.contextmanager
def _relayed_errors_kept_out():
    """While a job runs: the portable runner logs each error message of the job service (a worker's
    whole traceback) on the root logger, not Beam's, before raising it; keep those of stepnorm's own
    errors out. ``STEPNORM_DEBUG=1`` (``--debug``) keeps them."""
    if os.environ.get("STEPNORM_DEBUG") == "1":
        yield
        return
    root, relayed = logging.getLogger(), _RelayedStepnormError()
    root.addFilter(relayed)
    try:
        yield
    finally:
        root.removeFilter(relayed)


__all__ = ["AccumulatePartFn", "BeamPasses", "PassFn", "ReadIntoCache", "ReadTaskFn", "stage2_on_beam", "make_pipeline_options", "read_values", "run_beam", "task_key"]
