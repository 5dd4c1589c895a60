"""Stand-ins that lose one element, as a buggy runner would; importable by cluster workers.

Each keeps the real stage's behaviour except for the one element it drops, so the tests show that
stepnorm's counts-in-equals-counts-out checks turn a silent loss into an error.
"""

from __future__ import annotations

import apache_beam as beam

from stepnorm.pipelines.normalize import WriteShardsFn
from stepnorm.values import TaskValues, ValuesCache


class DropOneEpisode(TaskValues):
    """Keeps every episode a task read but index 1: one element lost between the read and the cache."""

    def add(self, episode):
        if episode.index != 1:
            super().add(episode)


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


class DropCacheWrites(ValuesCache):
    """A values cache whose writes are lost: a task's read values never arrive."""

    def write(self, key, values, dataset, locator):
        return None


class DropOneRecord(WriteShardsFn):
    """Writes every normalized episode but the first of each job: one record lost in a shard."""

    def _records(self, plan, job):
        records = super()._records(plan, job)
        next(records, None)
        return records
