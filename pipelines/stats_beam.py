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
# Each dataset's accumulator and validators' sample are computed by one call, on a worker, by the
# same code and from the same cached values in the same order as in-process
# (``stepnorm.pipelines.stats.accumulate_values``), so they are the same bytes; the launcher merges
# nothing but the datasets into their mixture, in config order, as in-process. The exact-quantile
# passes run over the datasets' cached values on the workers too: counts are integers that add,
# collected entries are sorted before use, so the quantiles are the same order statistics.
# Results come back as files in a temporary directory of the values cache (on a cluster, a place
# the workers and the launcher both see), one per dataset: a dataset whose file is missing fails
# the run.

STAGE2_FORMAT = 1


def _write_file(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def _read_file(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


class AccumulateDatasetFn(beam.DoFn):
    """Dataset index -> its accumulator and validators' sample, written to ``out``."""

    def __init__(self, cfg: Config, cache_root: str, tasks: dict, out: str):
        self.cfg, self.cache_root, self.tasks, self.out = cfg, cache_root, tasks, out

    def process(self, index):
        from stepnorm.pipelines.stats import accumulate_values

        ds = self.cfg.datasets[index]
        # room 0: nothing held for the passes, which run as their own stages
        acc, sample = accumulate_values(self.cfg, ds, ValuesCache(self.cache_root), self.tasks[ds.name], [0])
        _write_file(FileSystems.join(self.out, f"{index}.sample"), sample.to_bytes())
        _write_file(FileSystems.join(self.out, f"{index}.acc"), acc.to_bytes())  # last: the receipt
        yield index


class PassFn(beam.DoFn):
    """Dataset index -> its share of one exact-quantile pass (``kind`` ``count``: per wanted cell,
    entries below and at most each edge; ``collect``: the entries inside each interval), written
    to ``out``. ``request``: per dataset index, ``[((group, cell), edges or intervals, ranges)]``."""

    def __init__(self, cfg: Config, cache_root: str, tasks: dict, accs: str, kind: str, request: dict, out: str):
        self.cfg, self.cache_root, self.tasks, self.accs = cfg, cache_root, tasks, accs
        self.kind, self.request, self.out = kind, request, out

    def process(self, index):
        from stepnorm import blobs
        from stepnorm.pipelines.stats import KEEP_NUMERIC_VALUES, dataset_episodes
        from stepnorm.stats import ChunkStatsAccumulator, exact

        ds = self.cfg.datasets[index]
        acc = ChunkStatsAccumulator.from_bytes(_read_file(FileSystems.join(self.accs, f"{index}.acc")))
        episodes = dataset_episodes(ds, ValuesCache(self.cache_root), self.tasks[ds.name])
        # held in memory when they fit (the column-wise scan: several times faster), else streamed;
        # the same counts and entries either way
        data, held = [], 0
        for ep in episodes():
            held += ep.action.size + (ep.state.size if ep.state is not None else 0)
            if held > KEEP_NUMERIC_VALUES:
                data = episodes
                break
            data.append((ep.action, ep.state))
        ref = exact.DataRef(acc, data)
        rid = id(ref)
        wanted = self.request[index]
        sources = [exact.Source(rid, group, cell) for (group, cell), _, _ in wanted]
        arrays = {}
        if self.kind == "count":
            # the entries inside the edges' runs come back too while they fit this dataset's share
            # of the budget (then no collect pass is needed), as in-process
            lt, le, kept = exact._count_pass({s: v for s, (_, v, _) in zip(sources, wanted)}, {rid: ref},
                                             {s: r for s, (_, _, r) in zip(sources, wanted) if r},
                                             exact.KEEP_VALUES // len(self.request))
            for i, s in enumerate(sources):
                arrays[f"{i}.lt"], arrays[f"{i}.le"] = lt[s], le[s]
                if s in kept:
                    arrays[f"{i}.kept.bounds"], arrays[f"{i}.kept.values"] = kept[s]
        else:
            got = exact.LocalPasses.collect({s: v for s, (_, v, _) in zip(sources, wanted)}, {rid: ref})
            for i, (s, (_, intervals, _)) in enumerate(zip(sources, wanted)):
                for j, interval in enumerate(intervals):
                    arrays[f"{i}.{j}"] = np.sort(got[s][interval])
        _write_file(FileSystems.join(self.out, f"{index}.{self.kind}"), blobs.pack(arrays, STAGE2_FORMAT))
        yield index


def _run_per_dataset(cfg: Config, beam_args: Sequence[str], indices: list[int], fn: beam.DoFn, out: str,
                     suffix: str, label: str) -> dict[int, bytes]:
    """Run ``fn`` over the datasets ``indices`` spread over the workers; every dataset's result
    file must be there (a runner that drops an element fails the run)."""
    run_beam(beam_args, lambda p: (p | f"{label}Datasets" >> beam.Create(indices)
                                   | "Spread" >> beam.Reshuffle() | label >> beam.ParDo(fn)))
    results = {}
    for index in indices:
        path = FileSystems.join(out, f"{index}.{suffix}")
        if not FileSystems.exists(path):
            ds = cfg.datasets[index]
            raise InputDataError(ds.path, f"stage 2 on Beam: the {label.lower()} of dataset {ds.name!r} never came "
                                          f"back from the workers (the runner dropped it; datasets in != datasets out)")
        results[index] = _read_file(path)
    return results


class BeamPasses:
    """The exact-quantile passes of ``stepnorm.stats.exact.resolve`` as Beam jobs over the
    datasets' cached values (``exact.data_passes``); cells named by dataset index."""

    def __init__(self, cfg: Config, cache_root: str, tasks: dict, accs: str, work: str, beam_args: Sequence[str]):
        self.cfg, self.cache_root, self.tasks, self.accs = cfg, cache_root, tasks, accs
        self.work, self.beam_args, self.runs = work, list(beam_args), 0
        self.index = {ds.name: i for i, ds in enumerate(cfg.datasets)}

    def _run(self, kind: str, by_source: dict, ranges: dict | None, refs) -> tuple[dict, dict]:
        from stepnorm import blobs

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
        fn = PassFn(self.cfg, self.cache_root, self.tasks, self.accs, kind, request, out)
        got = _run_per_dataset(self.cfg, self.beam_args, sorted(request), fn, out, kind, f"Pass{self.runs}")
        results = {}
        for index, blob in got.items():
            with blobs.unpack(blob, STAGE2_FORMAT, "stage-2 pass result") as z:
                results[index] = {name: z[name].copy() for name in z}
        return order, results

    def count(self, source_edges, refs, ranges=None):
        order, results = self._run("count", source_edges, ranges, refs)
        lt, le, kept = {}, {}, {}
        for index, sources in order.items():
            got = results[index]
            for i, src in enumerate(sources):
                lt[src], le[src] = got[f"{i}.lt"], got[f"{i}.le"]
                if f"{i}.kept.values" in got:
                    kept[src] = (got[f"{i}.kept.bounds"], got[f"{i}.kept.values"])
        return lt, le, kept

    def collect(self, intervals, refs):
        intervals = {s: sorted(v) for s, v in intervals.items()}
        order, results = self._run("collect", intervals, None, refs)
        out = {}
        for index, sources in order.items():
            for i, src in enumerate(sources):
                out[src] = {iv: results[index][f"{i}.{j}"] for j, iv in enumerate(intervals[src])}
        return out


@contextlib.contextmanager
def stage2_on_beam(cfg: Config, tasks: dict, beam_args: Sequence[str], cache_root: str, log=print):
    """Stage 2 of ``stepnorm stats`` on Beam: yields ``(accumulators, samples)`` computed on the
    workers, inside ``exact.data_passes`` of ``BeamPasses`` (so ``artifact_from_accumulators``
    there runs its passes on the workers too). The temporary files go when it ends."""
    from stepnorm.samples import DatasetSample
    from stepnorm.stats import ChunkStatsAccumulator, exact

    work = FileSystems.join(cache_root, f".stage2-{uuid.uuid4().hex}")
    accs_dir = FileSystems.join(work, "accumulators")
    FileSystems.mkdirs(accs_dir)
    try:
        started = time.monotonic()
        indices = list(range(len(cfg.datasets)))
        fn = AccumulateDatasetFn(cfg, cache_root, tasks, accs_dir)
        got = _run_per_dataset(cfg, beam_args, indices, fn, accs_dir, "acc", "Accumulate")
        accs, samples = {}, {}
        for index, blob in got.items():
            name = cfg.datasets[index].name
            accs[name] = ChunkStatsAccumulator.from_bytes(blob)
            samples[name] = DatasetSample.from_bytes(_read_file(FileSystems.join(accs_dir, f"{index}.sample")))
        log(f"stage 2 on Beam: {len(indices)} datasets accumulated on the workers ({time.monotonic() - started:.1f}s)")
        passes = BeamPasses(cfg, cache_root, tasks, accs_dir, work, beam_args)
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


__all__ = ["AccumulateDatasetFn", "BeamPasses", "PassFn", "ReadIntoCache", "ReadTaskFn", "stage2_on_beam", "make_pipeline_options", "read_values", "run_beam", "task_key"]
