"""Bottom-k samples: exact merge, determinism, uniformity; the pipeline stores them."""

import json

import numpy as np
from gen import make_episodes
from hypothesis import given, settings
from hypothesis import strategies as st

from stepnorm.artifact import read_artifact
from stepnorm.samples import DatasetSample

EPISODES = make_episodes(seed=41, n=30, dim=3, state_dim=2, min_len=1, max_len=50)
FRAMES = [[f"ep{i}-t{t}".encode() for t in range(len(a))] for i, (a, _) in enumerate(EPISODES)]


def _sample(indices, max_steps=64):
    s = DatasetSample(max_steps=max_steps, max_images=5)
    for i in indices:
        s.add_episode("d", i, EPISODES[i][0], EPISODES[i][1], {"cam": FRAMES[i]})
    return s


WHOLE = _sample(range(len(EPISODES)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=len(EPISODES), max_size=len(EPISODES)), st.permutations(range(4)))
def test_any_split_merges_to_the_same_sample(labels, order):
    parts = [_sample([i for i, lab in enumerate(labels) if lab == p]) for p in order]
    total = DatasetSample(max_steps=64, max_images=5)
    for part in parts:
        total.merge(DatasetSample.from_bytes(part.to_bytes()))
    np.testing.assert_array_equal(total.priority, WHOLE.priority)
    np.testing.assert_array_equal(total.action, WHOLE.action)
    np.testing.assert_array_equal(total.state, WHOLE.state)
    assert total.images == WHOLE.images
    assert total.num_steps_seen == sum(len(a) for a, _ in EPISODES)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.sampled_from([3, 64, 4096]))
def test_batched_episodes_give_the_per_episode_sample(cuts, max_steps):
    """``add_episodes`` (the pipeline's path) in any batch split equals ``add_episode`` one episode
    at a time, bytes for bytes: steps, states, images (one frame, several, none, a raw tensor)."""
    def images(i):
        if i % 5 == 0:
            return {"cam": [np.full((2, 2, 3), i, np.uint8)], "wrist": []}
        return {"cam": FRAMES[i][:1] if i % 2 else FRAMES[i], "wrist": FRAMES[i][-1:]}

    one = DatasetSample(max_steps=max_steps, max_images=5)
    for i, (a, s) in enumerate(EPISODES):
        one.add_episode("d", i, a, s, images(i))
    batched = DatasetSample(max_steps=max_steps, max_images=5)
    start = 0
    for cut in cuts + [len(EPISODES)]:
        batched.add_episodes("d", [(i, EPISODES[i][0], EPISODES[i][1], images(i))
                                   for i in range(start, min(start + cut, len(EPISODES)))])
        start = min(start + cut, len(EPISODES))
    assert batched.to_bytes() == one.to_bytes()
    assert batched.images == one.images and len(one.images["cam"]) == 5


def test_sample_is_the_bottom_k_of_all_step_priorities():
    """Against a brute-force reference: every step's priority, one stable sort, the first k."""
    from stepnorm.samples import step_priorities

    prio = np.concatenate([step_priorities("d", i, len(a)) for i, (a, _) in enumerate(EPISODES)])
    actions = np.concatenate([a for a, _ in EPISODES]).astype(np.float64)
    keep = np.argsort(prio, kind="stable")[:64]
    np.testing.assert_array_equal(WHOLE.priority, prio[keep])
    np.testing.assert_array_equal(WHOLE.action, actions[keep])


def test_sample_rows_are_real_steps_and_images_from_distinct_episodes():
    all_rows = {tuple(r) for a, _ in EPISODES for r in a}
    assert all(tuple(r) in all_rows for r in WHOLE.action)
    assert len(WHOLE.action) == 64
    episodes_of_images = {f.split(b"-")[0] for f in WHOLE.images["cam"]}
    assert len(WHOLE.images["cam"]) == 5 and len(episodes_of_images) == 5


def test_sample_is_roughly_uniform_over_steps():
    rng = np.random.default_rng(0)
    s = DatasetSample(max_steps=2000)
    for i in range(400):
        s.add_episode("u", i, rng.uniform(size=(50, 1)))
    # a uniform sample of U(0,1) values: mean 0.5, within a few standard errors
    assert abs(s.action.mean() - 0.5) < 4 * (1 / np.sqrt(12 * 2000))


def test_pipeline_writes_samples_with_decodable_images(tmp_path):
    from stepnorm.cli import main

    assert main(["sample", str(tmp_path / "s")]) == 0
    assert main(["stats", str(tmp_path / "s" / "config.yaml"), "--out", str(tmp_path / "stats")]) == 0
    art = read_artifact(tmp_path / "stats")
    sample = art.sample("real_pick")
    doc = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert sample.num_steps_seen == doc["datasets"]["real_pick"]["num_steps"]
    assert sample.action.shape[1] == 7 and sample.state.shape[1] == 8
    assert set(np.unique(sample.action[:, 6])) <= {0.0, 1.0}
    frames = sample.images["observation/image"]
    assert len(frames) == 16 and all(f[:2] == b"\xff\xd8" for f in frames)  # JPEG, still encoded


def test_images_stored_as_tensors_survive_as_npy():
    from stepnorm.samples import decode_frame

    frames = [np.full((4, 4, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    s = DatasetSample(max_images=2)
    s.add_episode("t", 0, np.zeros((3, 1)), None, {"cam": frames})
    s.add_episode("t", 1, np.zeros((3, 1)), None, {"cam": frames})
    back = DatasetSample.from_bytes(s.to_bytes())
    decoded = [decode_frame(f) for f in back.images["cam"]]
    assert len(decoded) == 2 and all(d.dtype == np.float32 and d.shape == (4, 4, 3) for d in decoded)
    assert decode_frame(b"\xff\xd8\xff\xe0 jpeg") is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), min_size=1, max_size=30), min_size=1, max_size=40),
       st.integers(1, 40))
def test_pending_merge_keeps_the_bottom_k_with_ties_broken_by_arrival(batches, k):
    """Priorities with many ties, offered batch by batch: the kept rows are the first k of one stable
    sort over everything offered (ties go to whatever arrived first)."""
    s = DatasetSample(max_steps=k)
    rows, prios = [], []
    for batch in batches:
        prio = np.asarray(batch, np.float64)
        ids = np.arange(len(rows), len(rows) + len(prio), dtype=np.float64)[:, None]
        s._merge_steps(prio, ids, ids * 2)
        rows += list(ids[:, 0])
        prios += list(prio)
        if len(rows) % 3 == 0:  # read in between sometimes: flushes must not change the outcome
            assert len(s.priority) <= k
    keep = np.argsort(np.asarray(prios), kind="stable")[:k]
    np.testing.assert_array_equal(s.priority, np.asarray(prios)[keep])
    np.testing.assert_array_equal(s.action[:, 0], np.asarray(rows)[keep])
    np.testing.assert_array_equal(s.state[:, 0], 2 * np.asarray(rows)[keep])


def test_step_priorities_one_step_path_equals_the_array_path():
    """A one-step call (an episode's frame priority) takes a Python-int path: same bits as step 0
    of the array path, for many seeds; priorities lie in [0, 1) and differ across steps."""
    from stepnorm.samples import step_priorities

    for i in range(500):
        many = step_priorities("ds#cam", i, 7)
        assert step_priorities("ds#cam", i, 1)[0] == many[0]
        assert ((many >= 0) & (many < 1)).all() and len(np.unique(many)) == 7
