"""Beam runners from stepnorm's command line: short runner names, Beam on Dask.

Beam registers a runner's options only when the runner's module is imported, so
``--runner DaskRunner --dask_client_address HOST:PORT`` would otherwise fail stepnorm's unknown-option
check (and Beam itself only knows the Dask runner by its full path). ``runner_args`` maps short
names and imports the runner's module first.

Beam's DaskRunner (2.77) translates a pipeline into one ``dask.bag`` graph and has silent-loss bugs
in shapes stepnorm does not use: values emitted in ``finish_bundle`` are dropped, only the last of
several output branches is computed, every tagged output receives every element, file sinks
(``WriteToText``, built on side inputs) write empty files, ``Read`` is not translated (passed
through as nothing), and ``WindowInto`` is passed through (windows are ignored).
``check_dask_shape`` refuses any of those shapes before a job starts, so a pipeline change that
would lose data on Dask fails loudly instead. It also spreads the work: Beam puts up to 128
elements of a ``Create`` in one Dask partition and its ``Reshuffle`` does nothing, so without
``--dask_npartitions`` every read task would run in one worker; ``plan_dask_partitions`` derives
the partitions from the task count and the cluster's worker threads.
"""

from __future__ import annotations

from typing import Sequence

from stepnorm.errors import UsageError

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
# Short names Beam does not resolve itself (it knows DirectRunner, DataflowRunner, PortableRunner,
# FlinkRunner, SparkRunner, PrismRunner by name).
SHORT_NAMES = {"DaskRunner": DASK_RUNNER}
# Partitions per worker thread: more than one, so a slow task does not leave a thread idle at the end.
PARTITIONS_PER_THREAD = 4


def runner_name(beam_args: Sequence[str]) -> str | None:
    """The value of ``--runner`` in ``beam_args`` (the last one, as argparse takes it), or None."""
    name = None
    for i, arg in enumerate(beam_args):
        if arg == "--runner" and i + 1 < len(beam_args):
            name = beam_args[i + 1]
        elif arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
    return name


def is_dask(beam_args: Sequence[str]) -> bool:
    """True when ``beam_args`` select Beam's DaskRunner (short name or full path)."""
    return runner_name(beam_args) in (DASK_RUNNER, "DaskRunner")


def runner_args(beam_args: Sequence[str]) -> list[str]:
    """``beam_args`` with short runner names replaced by Beam's full path; imports that runner.

    Importing the runner's module registers its options with Beam, so the unknown-option check
    that follows knows them. Raises UsageError when the runner's extra is not installed.
    """
    out = []
    for i, arg in enumerate(beam_args):
        if arg.startswith("--runner=") and arg.split("=", 1)[1] in SHORT_NAMES:
            arg = "--runner=" + SHORT_NAMES[arg.split("=", 1)[1]]
        elif i > 0 and beam_args[i - 1] == "--runner" and arg in SHORT_NAMES:
            arg = SHORT_NAMES[arg]
        out.append(arg)
    if is_dask(out):
        try:
            import apache_beam.runners.dask.dask_runner  # noqa: F401  (registers DaskOptions)
        except ImportError as exc:
            raise UsageError(None, f"--runner DaskRunner needs Dask ({exc}); install it with "
                                   f"pip install 'stepnorm[dask]'") from None
    return out


# -- Beam on Dask ---------------------------------------------------------------------------------
def _leaves(pipeline) -> list:
    """The pipeline's primitive transforms in the order Beam's Dask visitor translates them."""
    from apache_beam.pipeline import PipelineVisitor

    class Leaves(PipelineVisitor):
        def __init__(self):
            self.nodes = []

        def visit_transform(self, node):
            self.nodes.append(node)

    visitor = Leaves()
    pipeline.visit(visitor)
    return visitor.nodes


def dask_translation(pipeline, options):
    """The copy of ``pipeline`` that Beam's DaskRunner translates, with the runner's overrides.

    ``Pipeline.run`` sends a pipeline for a runner outside the Fn API through a runner-API round
    trip and runs the copy; this makes the same round trip and applies the runner's own overrides
    (idempotent: the runner applies them again). Run the copy with ``run(test_runner_api=False)``.
    """
    import apache_beam as beam
    from apache_beam.runners.dask.overrides import dask_overrides

    copy = beam.Pipeline.from_runner_api(pipeline.to_runner_api(use_fake_coders=True), pipeline.runner, options)
    copy.replace_all(dask_overrides())
    return copy


def dask_pipeline(pipeline, options):
    """``dask_translation``, checked (``check_dask_shape``) and with the work spread
    (``plan_dask_partitions``); returns the pipeline to run and the line saying how it is split."""
    copy = dask_translation(pipeline, options)
    check_dask_shape(copy)
    return copy, plan_dask_partitions(copy)


def check_dask_shape(pipeline) -> None:
    """Refuse pipeline shapes that Beam's DaskRunner (2.77) silently loses data in.

    ``pipeline`` has the runner's overrides applied (``dask_translation``); every primitive the runner
    would translate is checked. Raises UsageError naming the stage.
    """
    import apache_beam as beam
    from apache_beam.runners.dask.overrides import _GroupAlsoByWindow, _Reshuffle
    from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS
    from apache_beam.transforms.window import GlobalWindows

    leaves = _leaves(pipeline)

    def refuse(node, problem):
        raise UsageError(None, f"stage {node.full_label!r} cannot run on Beam's DaskRunner: {problem} "
                               f"(it would lose data silently); use another runner")

    consumed = set()
    for node in leaves:
        consumed.update(id(p) for p in node.inputs)
        consumed.update(id(s.pvalue) for s in node.side_inputs)
    for node in leaves:
        kind = node.transform.__class__
        # The runner passes these through unchanged, which is right: a reshuffle only moves data,
        # and its group-by-key already groups (in the global window, checked here).
        if kind is _GroupAlsoByWindow and not isinstance(node.transform.windowing.windowfn, GlobalWindows):
            refuse(node, "only the global window is grouped")
        if kind not in TRANSLATIONS and kind not in (_Reshuffle, _GroupAlsoByWindow):
            refuse(node, f"{kind.__name__} has no Dask translation (the runner passes its input through "
                         f"unchanged; a Read yields nothing)")
        if node.side_inputs:
            # A plain AsList side input came through in a trial, but the file sinks built on side
            # inputs write empty files; stepnorm uses none, so none is trusted.
            refuse(node, "side inputs are not trusted on Dask (file sinks built on them write empty files)")
        if isinstance(node.transform, beam.ParDo):
            if len(node.outputs) > 1:
                refuse(node, "tagged outputs each receive every element")
            if type(node.transform.fn).finish_bundle is not beam.DoFn.finish_bundle:
                refuse(node, "values emitted in finish_bundle are dropped")
    # The runner computes only the last stage's graph: every other stage must feed into it.
    dangling = [n for n in leaves[:-1] if not any(id(p) in consumed for p in n.outputs.values())]
    if dangling:
        refuse(dangling[0], "only the last output branch of a pipeline is computed")


def plan_dask_partitions(pipeline) -> str:
    """Set ``--dask_npartitions`` from the task count and the cluster; returns a line saying so.

    The count is the number of elements the pipeline's one ``Create`` holds (the read or write
    tasks); the cluster is asked for its workers and threads. An explicit ``--dask_npartitions`` or
    ``--dask_partition_size`` is kept. Sets the option on ``pipeline.options`` (a pipeline holds
    its own copy of the options it was built with).
    """
    from apache_beam.runners.dask.dask_runner import DaskOptions
    from apache_beam.runners.dask.overrides import _Create

    dask = pipeline.options.view_as(DaskOptions)
    creates = [n.transform for n in _leaves(pipeline) if isinstance(n.transform, _Create)]
    tasks = sum(len(c.values) for c in creates)
    workers, threads, where = _cluster_size(dask)
    if dask.npartitions or dask.partition_size:
        how = (f"{dask.npartitions} partitions (--dask_npartitions)" if dask.npartitions
               else f"partitions of {dask.partition_size} tasks (--dask_partition_size)")
    else:
        dask.npartitions = max(1, min(tasks, PARTITIONS_PER_THREAD * threads))
        how = f"{dask.npartitions} partitions"
    return f"dask: {tasks} tasks in {how} over {workers} workers ({threads} threads) at {where}"


def _cluster_size(dask) -> tuple[int, int, str]:
    """(workers, threads, address) of the scheduler the runner will connect to."""
    import os

    if not dask.address and not dask.scheduler_file:
        # The runner starts a LocalCluster: Dask's default is one thread per core in total.
        cores = os.cpu_count() or 1
        return cores, cores, "a new local Dask cluster"
    import dask.distributed as ddist

    kwargs = {"address": dask.address, "scheduler_file": dask.scheduler_file}
    if dask.timeout is not None:
        kwargs["timeout"] = dask.timeout
    where = dask.address or dask.scheduler_file
    try:
        with ddist.Client(**kwargs) as client:
            nthreads = client.nthreads()
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(where, f"cannot reach the Dask scheduler ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if not nthreads:
        raise UsageError(where, "the Dask scheduler has no workers")
    return len(nthreads), sum(nthreads.values()), where


def close_dask_client(result) -> None:
    """Close the client Beam's DaskRunner opened for the job (it leaves it open)."""
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


__all__ = ["DASK_RUNNER", "check_dask_shape", "close_dask_client", "dask_pipeline", "dask_translation", "is_dask",
           "plan_dask_partitions", "runner_args", "runner_name"]
