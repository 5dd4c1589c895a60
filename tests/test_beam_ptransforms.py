"""The public PTransforms (stepnorm.beam) in a Beam pipeline of a user's own.

ComputeChunkStats, with bracketing samples small enough that every exact-quantile pass runs as a
Beam stage: quantiles, counts, min and max equal the in-process path bit for bit and the exact
order statistics of the loop reference; moments agree to float64 rounding (1e-14 of the
block's scale: Beam merges partial results in its own order); another episode order or
partitioning gives the same result. WriteNormalized + plan_datasets/finish_datasets are covered
by `stepnorm normalize`, which is built from them (tests/test_normalize_pipeline.py).
"""

import apache_beam as beam
import numpy as np
import pytest
from gen import make_episodes
from reference import chunk_entries, exact_quantile

from stepnorm.beam import ComputeChunkStats, chunk_statistics
from stepnorm.sources.base import Episode
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator

Q = (0.01, 0.25, 0.5, 0.99)
H = 5
DELTA = (True, False, True, False)
SPEC = AccumulatorSpec(H, DELTA, sketch_k=16)  # 16 distinct values per cell: the passes must run


@pytest.fixture(scope="module")
def data():
    one = make_episodes(seed=7, n=30, dim=4, state_dim=4, min_len=1, max_len=25)
    two = make_episodes(seed=8, n=20, dim=4, state_dim=4, min_len=1, max_len=25, heavy=True)
    for a, _ in two[:5]:
        a[:, 3] = np.round(a[:, 3])  # ties
    return {"one": one, "two": two}


def _local(data, weighting="samples", weights=None):
    accs = {}
    for name, episodes in data.items():
        acc = ChunkStatsAccumulator(SPEC, name)
        for a, s in episodes:
            acc.add_episode(a, s)
        acc.data = episodes
        accs[name] = acc
    return chunk_statistics(accs, Q, weighting, weights)


def _run(elements, weighting="samples", weights=None, options=None):
    """The pipeline's one output element (written to a file: Beam runs a pickled copy of the code)."""
    import pickle
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        def keep(result, i=[0]):
            (Path(tmp) / f"out-{id(result)}.pkl").write_bytes(pickle.dumps(result))
            return result

        with beam.Pipeline(options=options) as p:
            _ = (p | beam.Create(elements, reshuffle=True)
                 | ComputeChunkStats(SPEC, Q, weighting, weights)
                 | beam.Map(keep))
        files = sorted(Path(tmp).glob("out-*.pkl"))
        assert len(files) == 1, f"expected one statistics element, got {len(files)}"
        return pickle.loads(files[0].read_bytes())


def _elements(data, order_seed=None, as_episodes=False):
    items = [(name, ep) for name, episodes in data.items() for ep in episodes]
    if order_seed is not None:
        np.random.default_rng(order_seed).shuffle(items)
    if as_episodes:
        return [Episode(name, f"{name}#{i}", i, a, s) for i, (name, (a, s)) in enumerate(items)]
    return items


def _assert_same(got, expect, moments_rtol):
    def walk(g, e, path):
        if isinstance(e, dict):
            assert set(g) == set(e), path
            for k in e:
                walk(g[k], e[k], f"{path}/{k}")
            return
        g, e = np.asarray(g), np.asarray(e)
        if path.rsplit("/", 1)[-1] in ("mean", "std"):
            # float64 merges in another order: a few ulps of the block's scale
            scale = np.nanmax(np.abs(e)) if np.isfinite(e).any() else 0.0
            np.testing.assert_allclose(g, e, rtol=moments_rtol, atol=moments_rtol * scale, err_msg=path)
        else:
            np.testing.assert_array_equal(g, e, err_msg=path)

    walk(got, expect, "")


def test_equals_the_in_process_path_and_the_exact_reference(data):
    acc = ChunkStatsAccumulator(SPEC, "one")
    for a, st in data["one"]:
        acc.add_episode(a, st)
    acc.flush()
    for group in ("tail", "delta", "state"):  # truncated samples: quantiles need the Beam passes
        assert any(sm.truncated for sm in acc.groups[group].samples.samples), group
    got = _run(_elements(data))
    _assert_same(got, _local(data), 1e-14)
    # the exact order statistics, from the loop reference (delta dims included)
    for name in ("one", "two", None):
        episodes = data[name] if name else data["one"] + data["two"]
        block = (got["datasets"][name] if name else got["combined"])["action"]["per_timestep"]
        entries = chunk_entries(episodes, H, DELTA)
        for k in range(H):
            for d in range(4):
                for q in Q:
                    key = f"q{round(q * 100):02d}"
                    assert block[key][k, d] == exact_quantile(entries[k][:, d], q), (name, k, d, q)


def test_other_order_partitioning_and_episode_objects_give_the_same_statistics(data):
    first = _run(_elements(data, order_seed=1))
    second = _run(_elements(data, order_seed=2, as_episodes=True))
    _assert_same(second, first, 1e-14)


def test_mixture_weighting(data):
    weights = {"one": 0.25, "two": 3.0}
    _assert_same(_run(_elements(data), "mixture", weights), _local(data, "mixture", weights), 1e-14)


def test_bad_parameters_raise_at_construction():
    with pytest.raises(ValueError, match="weighting"):
        ComputeChunkStats(SPEC, Q, "uniform")
