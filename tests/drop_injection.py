"""Stand-ins that lose one element, as a buggy runner would; importable by cluster workers.

Each keeps the real stage's behaviour except for the one element it drops, so the tests show that
stepnorm's counts-in-equals-counts-out checks turn a silent loss into an error.
"""

from __future__ import annotations

import apache_beam as beam

from stepnorm.pipelines.normalize import WriteShardsFn
from stepnorm.pipelines.stats_beam import AccumulateFn


class DropOneEpisode(AccumulateFn):
    """Accumulates every episode but index 1 of each dataset: one element lost before the combine."""

    def add_input(self, summary, episode):
        return summary if episode.index == 1 else super().add_input(summary, episode)


class DropFirstElement(beam.PTransform):
    """A reshuffle that loses the first element of each bundle: a whole read or write task lost."""

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_DropFirstFn())


class _DropFirstFn(beam.DoFn):
    def start_bundle(self):
        self.seen = 0

    def process(self, element):
        self.seen += 1
        if self.seen > 1:
            yield element


def drop_staged_result(item, staging):
    """The stats pipeline's last stage, writing nothing: a dataset's statistics lost."""
    return item[0]


class DropOneRecord(WriteShardsFn):
    """Writes every normalized episode but the first of each job: one record lost in a shard."""

    def _records(self, plan, job):
        records = super()._records(plan, job)
        next(records, None)
        return records
