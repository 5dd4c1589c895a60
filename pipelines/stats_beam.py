"""The Beam side of the statistics pipeline: read tasks -> per-task numeric values in the cache.

Read tasks (RLDS shard reads, LeRobot datasets) are spread over workers; each task's numeric
values (actions, states before transforms, episode boundaries, one image frame per episode and
camera for the validators) go to one entry of the values cache (``stepnorm.values``); the
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
import os
import re
import sys
import tempfile
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from stepnorm.config import Config
from stepnorm.errors import StepnormError, UsageError
from stepnorm.samples import pick_frame
from stepnorm.sources import read_task
from stepnorm.values import TaskValues, ValuesCache


def make_pipeline_options(beam_args: Sequence[str]) -> tuple[PipelineOptions, object | None]:
    """Beam options from pass-through args, and the runner to use (FnApiRunner by default).

    Beam silently discards options it does not know; a typo there would change how a job runs,
    so unknown options are a usage error.
    """
    unknown = _unknown_options(tuple(beam_args))
    if unknown:
        raise UsageError(None, f"unknown Beam pipeline option(s): {', '.join('--' + u for u in unknown)}")
    options = PipelineOptions(list(beam_args))
    if any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
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


class ReadTaskFn(beam.DoFn):
    """(cache key, ReadTask) -> the task's numeric values (before transforms) in the values cache.

    Each task is read by one call, its episodes in file order, so its entry is the same bytes
    whatever the runner, worker count or bundle split.
    """

    def __init__(self, cfg: Config, cache_root: str):
        self.cfg = cfg
        self.by_name = {ds.name: ds for ds in cfg.datasets}
        self.cache_root = cache_root

    def setup(self):
        self.progress = _progress_bar("reading")
        self.steps, self.started = 0, time.monotonic()
        self.episodes_counter = beam.metrics.Metrics.counter("stepnorm", "episodes_read")
        self.cache = ValuesCache(self.cache_root)

    def teardown(self):
        self.progress.close()

    def process(self, item):
        key, task = item
        ds = self.by_name[task.dataset]
        image_keys = ds.image_keys if ds.format == "rlds" else ()
        values = TaskValues()
        for episode in read_task(ds, task, image_keys=image_keys, transform=False):
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
        yield key


def read_values(cfg: Config, items: list, beam_args: Sequence[str], cache_root: str) -> None:
    """Run the Beam pipeline that reads ``items`` ((cache key, ReadTask) pairs) into the cache."""
    run_beam(beam_args, lambda p: (
        p
        | "Tasks" >> beam.Create(items)
        | "Spread" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(ReadTaskFn(cfg, cache_root))
    ))


def run_beam(beam_args: Sequence[str], build) -> None:
    """Build a pipeline with ``build(p)`` and run it to completion (FnApiRunner unless ``--runner``).

    A StepnormError raised inside a worker comes back as itself, so the CLI prints one line.
    """
    options, runner = make_pipeline_options(beam_args)
    try:
        with _worker_output_kept_aside(options), beam.Pipeline(runner=runner, options=options) as p:
            build(p)
    except StepnormError:
        raise
    except Exception as exc:  # Beam wraps worker exceptions; surface ours
        inner = _find_stepnorm_error(exc) or _stepnorm_error_from_text(str(exc))
        if inner is not None:
            raise inner from None
        raise


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


__all__ = ["ReadTaskFn", "make_pipeline_options", "read_values", "run_beam"]
