"""``ComputeChunkStats``: per-timestep chunk statistics with exact quantiles as a Beam PTransform.

In the style of TensorFlow Transform's analyzers: a PCollection of episodes in, one element out
(the statistics of every dataset in it and of their mixture), composable in a user's own Beam
pipeline. The numeric core is stepnorm.stats; this module only lays it out as Beam stages:

1. ``CombinePerKey`` (key: the episode's dataset) of ``ChunkStatsAccumulator`` (moments and the
   bracketing samples, mergeable);
2. up to three passes over the episodes (``stats.exact``: count below the candidate edges, count
   again over every edge when a window missed, collect the entries inside each interval). Each
   pass is planned from the accumulators and the previous passes' results (a side input), run as a
   ``FlatMap`` over the episodes, and its partial results summed by ``CombineGlobally``. Counts add
   and collected entries are sorted before use, so the result does not depend on bundling;
3. the statistics, computed from the accumulators and the passes' results.

Counts, min, max and quantiles are exact and identical to the in-process path for any runner,
bundle split or episode order; moments are float64 Chan merges in the runner's merge order (equal
to the in-process values to float64 rounding, ~1e-15 of the data's scale). ``stepnorm stats``
itself reads through Beam (stepnorm.pipelines.stats_beam.ReadIntoCache) and computes stage 2 in
one canonical order, which makes its artifact bit-identical everywhere.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import apache_beam as beam
import numpy as np

from stepnorm.sources.base import Episode
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator, combine
from stepnorm.stats import exact
from stepnorm.stats.combine import WEIGHTINGS, resolve_all

__all__ = ["ComputeChunkStats", "chunk_statistics"]

MAX_PASSES = 3  # count (windows), count (every edge; rare), collect


def _keyed(element) -> tuple[str, tuple]:
    """An ``Episode`` (keyed by its dataset) or ``(dataset, (action, state))``."""
    if isinstance(element, Episode):
        return element.dataset, (element.action, element.state, element.source)
    name, (action, state) = element
    return str(name), (action, state, None)


class _AccumulateFn(beam.CombineFn):
    def __init__(self, spec: AccumulatorSpec):
        self.spec = spec

    def create_accumulator(self):
        return ChunkStatsAccumulator(self.spec)

    def add_input(self, acc, element):
        action, state, source = element
        acc.add_episode(action, state, source=source)
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for other in accumulators:
            first.merge(other)
        return first

    def extract_output(self, acc):
        acc.flush()
        return acc


class _NeedPass(Exception):
    def __init__(self, request):
        super().__init__("a pass over the data is needed")
        self.request = request


class _Replay:
    """The passes ``resolve`` asks for, answered from results computed earlier (by Beam stages);
    the first pass without a result raises ``_NeedPass`` with its request, cells named
    ``(dataset, group, cell)``."""

    def __init__(self, results: Sequence):
        self.results, self.used = list(results), 0

    @staticmethod
    def _named(by_source, refs):
        named = {(refs[s.ref].acc.name, s.group, s.cell): v for s, v in by_source.items()}
        if len(named) != len(by_source):
            raise ValueError("two datasets share a name: ComputeChunkStats keys its passes by dataset name")
        return named

    def _result(self, request):
        if self.used == len(self.results):
            raise _NeedPass(request)
        self.used += 1
        return self.results[self.used - 1]

    def count(self, source_edges, refs, ranges=None):  # ranges: only a speed-up, not needed here
        named = self._named(source_edges, refs)
        got = self._result(("count", named))
        lt, le = {}, {}
        for src, edges in source_edges.items():
            zero = np.zeros(len(edges), np.int64)
            lt[src], le[src] = got.get((refs[src.ref].acc.name, src.group, src.cell), (zero, zero))
        return lt, le

    def collect(self, intervals, refs):
        got = self._result(("collect", self._named(intervals, refs)))
        out = {}
        for src, ivs in intervals.items():
            parts = got.get((refs[src.ref].acc.name, src.group, src.cell), {})
            out[src] = {iv: np.sort(np.concatenate(parts.get(iv, []) + [np.zeros(0)])) for iv in ivs}
        return out


def chunk_statistics(accumulators: Mapping[str, ChunkStatsAccumulator], quantiles: Sequence[float],
                     weighting: str = "samples", weights: Mapping[str, float] | None = None,
                     passes=None) -> dict:
    """``{"datasets": {name: FinalStats.to_dict}, "combined": ...}`` from merged accumulators.

    ``passes``: where the exact-quantile passes run (default: each accumulator's ``data`` read
    again in this process; ComputeChunkStats replays the results of its Beam stages).
    """
    names = sorted(accumulators)
    finals = {n: accumulators[n].finalize() for n in names}
    weights = dict(weights or {})
    combined = combine([(finals[n], float(weights.get(n, 1.0))) for n in names], weighting)
    blocks = [c for f in [*finals.values(), combined] for c in f.blocks]
    with exact.data_passes(passes or exact.LocalPasses):
        resolve_all(blocks, quantiles)
    return {"datasets": {n: finals[n].to_dict(quantiles) for n in names}, "combined": combined.to_dict(quantiles)}


def _plan_pass(results, accs, quantiles, weighting, weights):
    """The next pass's request, or None when the statistics need no further pass."""
    try:
        chunk_statistics(accs, quantiles, weighting, weights, passes=_Replay(results))
    except _NeedPass as need:
        return need.request
    return None


def _partial_pass(element, request, accs):
    """One episode's share of a pass: counts (lt, le) per cell, or the entries inside each interval."""
    if request is None:
        return
    name, (action, state, _) = element
    kind, wanted = request
    mine = {(g, c): v for (n, g, c), v in wanted.items() if n == name}
    if not mine:
        return
    ref = exact.DataRef(accs[name], [(action, state)])
    rid = id(ref)
    sources = {exact.Source(rid, g, c): v for (g, c), v in mine.items()}
    if kind == "count":
        lt, le, _ = exact.LocalPasses.count(sources, {rid: ref})
        yield {(name, s.group, s.cell): (lt[s], le[s]) for s in sources}
    else:
        got = exact.LocalPasses.collect(sources, {rid: ref})
        yield {(name, s.group, s.cell): {iv: [v] for iv, v in got[s].items() if len(v)} for s in sources}


class _MergePartialsFn(beam.CombineFn):
    """Sums counts; gathers collected entries (sorted when used, so the order is irrelevant)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, partial):
        for key, value in partial.items():
            if isinstance(value, tuple):
                if key in acc:
                    acc[key] = (acc[key][0] + value[0], acc[key][1] + value[1])
                else:
                    acc[key] = (value[0].copy(), value[1].copy())
            else:
                into = acc.setdefault(key, {})
                for iv, parts in value.items():
                    into.setdefault(iv, []).extend(parts)
        return acc

    def merge_accumulators(self, accumulators):
        out = {}
        for acc in accumulators:
            out = self.add_input(out, acc)
        return out

    def extract_output(self, acc):
        return acc


def _record(results, request, partial):
    return results if request is None else [*results, partial]


def _finish(results, accs, quantiles, weighting, weights):
    replay = _Replay(results)
    try:
        return chunk_statistics(accs, quantiles, weighting, weights, passes=replay)
    except _NeedPass:
        raise RuntimeError(f"exact quantiles still need a pass after {MAX_PASSES} passes") from None


class ComputeChunkStats(beam.PTransform):
    """PCollection of episodes -> one dict: every dataset's statistics and their mixture's.

    Args:
        spec: the ``AccumulatorSpec`` (horizon, delta_mask, sample size).
        quantiles: the quantiles to compute exactly (numpy's ``inverted_cdf`` rule).
        weighting: ``samples`` or ``mixture`` (SPEC section 3), for ``"combined"``.
        weights: per dataset name, its mixture weight (default 1.0).

    Input elements: ``stepnorm.sources.base.Episode`` (keyed by ``episode.dataset``) or
    ``(dataset, (action [T, D], state [T, Ds] or None))``. Output: one element
    ``{"datasets": {name: stats}, "combined": stats}``, each ``stats`` as
    ``FinalStats.to_dict``: ``num_episodes``, ``num_steps``, ``action`` (``global``,
    ``per_timestep``, ``pooled``, and ``raw`` with a delta_mask) and ``state``, each block
    ``count``, ``mean``, ``std``, ``min``, ``max`` and ``qNN`` numpy arrays.
    """

    def __init__(self, spec: AccumulatorSpec, quantiles: Sequence[float] = (0.01, 0.5, 0.99),
                 weighting: str = "samples", weights: Mapping[str, float] | None = None):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.spec, self.quantiles = spec, tuple(float(q) for q in quantiles)
        self.weighting, self.weights = weighting, dict(weights or {})

    def expand(self, episodes):
        args = (self.quantiles, self.weighting, self.weights)
        keyed = episodes | "Key" >> beam.Map(_keyed)
        accs = (keyed
                | "Accumulate" >> beam.CombinePerKey(_AccumulateFn(self.spec))
                | "Name" >> beam.MapTuple(_named_acc)
                | "ByName" >> beam.combiners.ToDict())
        accs_side = beam.pvalue.AsSingleton(accs)
        results = episodes.pipeline | "NoPassesYet" >> beam.Create([[]])
        for i in range(MAX_PASSES):
            request = results | f"Plan{i}" >> beam.Map(_plan_pass, accs_side, *args)
            partial = (keyed
                       | f"Pass{i}" >> beam.FlatMap(_partial_pass, beam.pvalue.AsSingleton(request), accs_side)
                       | f"Merge{i}" >> beam.CombineGlobally(_MergePartialsFn()))
            results = results | f"Record{i}" >> beam.Map(_record, beam.pvalue.AsSingleton(request),
                                                         beam.pvalue.AsSingleton(partial))
        return results | "Statistics" >> beam.Map(_finish, accs_side, *args)


def _named_acc(name, acc):
    acc.name = name
    return name, acc
