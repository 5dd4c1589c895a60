"""The stats artifact: schema, atomic write, validating reader, fingerprints."""

import json
import os

import numpy as np
import pytest
from gen import make_episodes
from reference import chunk_entries, two_pass

from stepnorm.artifact import artifact_fingerprint, fingerprint, read_artifact, write_artifact
from stepnorm.artifact import accumulate, artifact_from_accumulators
from stepnorm.config import parse_config
from stepnorm.errors import ArtifactError, InputDataError
from stepnorm.normalize import Normalizer
from stepnorm.sources.base import Episode


def _episodes(name, seed, n=20, dim=3, shift=0.0):
    return [Episode(name, f"gen{seed}", i, a + shift, s) for i, (a, s) in
            enumerate(make_episodes(seed=seed, n=n, dim=dim, state_dim=4))]


def _config(tmp_path, **extra):
    raw = {"horizon": 5, "datasets": [
        {"name": "sim", "format": "rlds", "path": str(tmp_path), "domain": "sim", "weight": 1.0},
        {"name": "real", "format": "rlds", "path": str(tmp_path), "domain": "real", "weight": 3.0}]}
    raw.update(extra)
    return parse_config(raw, where="cfg.yaml")


def _build(tmp_path, cfg=None):
    cfg = cfg or _config(tmp_path)
    eps = {"sim": _episodes("sim", 1), "real": _episodes("real", 2, shift=1.0)}
    accs = {name: accumulate(cfg, name, e) for name, e in eps.items()}
    doc = artifact_from_accumulators(cfg, accs, {"sim": "f" * 64, "real": "e" * 64})
    return cfg, eps, accs, doc


def test_schema_and_values(tmp_path):
    cfg, eps, accs, doc = _build(tmp_path)
    out = write_artifact(tmp_path / "stats", doc, {n: a.to_bytes() for n, a in accs.items()})
    art = read_artifact(tmp_path / "stats")
    raw = json.loads(out.read_text())
    assert raw["format"] == "stepnorm.stats" and raw["version"] == 1 and raw["horizon"] == 5
    assert set(raw["datasets"]) == {"sim", "real"}
    assert raw["datasets"]["sim"]["domain"] == "sim" and raw["datasets"]["real"]["weight"] == 3.0
    assert raw["combined"]["weighting"] == "samples"
    pt = raw["combined"]["action"]["per_timestep"]
    assert set(pt) == {"count", "mean", "std", "min", "max", "q01", "q99"}
    assert np.asarray(pt["mean"]).shape == (5, 3) and np.asarray(pt["count"]).shape == (5,)
    assert np.asarray(raw["combined"]["state"]["global"]["mean"]).shape == (4,)
    # values: combined per-timestep mean = reference over both datasets
    both = [(e.action, e.state) for e in eps["sim"] + eps["real"]]
    per_k = chunk_entries(both, 5)
    np.testing.assert_allclose(art.stats("action", "per_timestep")["std"][3], two_pass(per_k[3])[2], rtol=1e-9)
    assert raw["combined"]["num_episodes"] == 40
    assert (tmp_path / "stats" / "accumulators" / "sim.acc").exists()
    # a Normalizer builds straight from the artifact
    norm = Normalizer.from_artifact(art, mode="q01_q99")
    assert norm.normalize(np.zeros((5, 3))).shape == (5, 3)


def test_fingerprint_covers_config_and_datasets(tmp_path):
    cfg, _, _, doc = _build(tmp_path)
    assert doc["fingerprint"] == artifact_fingerprint(cfg.resolved(), {"sim": "f" * 64, "real": "e" * 64})
    assert artifact_fingerprint(cfg.resolved(), {"sim": "0" * 64, "real": "e" * 64}) != doc["fingerprint"]
    cfg2 = _config(tmp_path, horizon=6)
    assert artifact_fingerprint(cfg2.resolved(), {"sim": "f" * 64, "real": "e" * 64}) != doc["fingerprint"]
    assert fingerprint({"a": 1, "b": [1.0, 2]}) == fingerprint({"b": [1.0, 2], "a": 1})
    # gate-only sections (thresholds, model input) do not make statistics stale
    cfg3 = _config(tmp_path, validators={"drift": {"js_threshold": 0.5}}, model={"image_input": "float01"})
    assert artifact_fingerprint(cfg3.resolved(), {"sim": "f" * 64, "real": "e" * 64}) == doc["fingerprint"]


def test_mixture_weighting_recorded(tmp_path):
    _, _, _, doc = _build(tmp_path, _config(tmp_path, weighting="mixture"))
    assert doc["combined"]["weighting"] == "mixture"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.pop("horizon"), "horizon"),
    (lambda d: d["combined"]["action"]["per_timestep"].update(mean=[[0.0] * 3] * 4), r"shape \[4, 3\], expected \[5, 'D'\]"),
    (lambda d: d["datasets"]["sim"]["action"]["global"].update(std=[1.0, 2.0]), "2 dims, elsewhere 3"),
    (lambda d: d["datasets"]["real"]["action"]["pooled"].pop("q99"), "no 'q99'"),
])
def test_reader_rejects_malformed(tmp_path, mutate, message):
    _, _, _, doc = _build(tmp_path)
    doc = json.loads(json.dumps(doc))
    mutate(doc)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "stats.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=message):
        read_artifact(tmp_path / "bad")


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="no stats artifact"):
        read_artifact(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "stats.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"junk/stats.json: not valid JSON"):
        read_artifact(tmp_path / "junk")


def test_write_is_atomic_and_replaces(tmp_path, monkeypatch):
    _, _, accs, doc = _build(tmp_path)
    target = tmp_path / "stats"
    write_artifact(target, doc)
    before = (target / "stats.json").read_text()
    # a failure while writing leaves the old artifact untouched and no temporary directory behind
    import stepnorm.outputs as outputs_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(outputs_mod, "publish", boom)
    with pytest.raises(OSError):
        write_artifact(target, dict(doc, created="later"))
    assert (target / "stats.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    write_artifact(target, dict(doc, created="later"))
    assert json.loads((target / "stats.json").read_text())["created"] == "later"
    assert sorted(os.listdir(tmp_path)) == ["stats"]


def test_empty_dataset_and_dim_mismatch_are_input_errors(tmp_path):
    cfg = _config(tmp_path)
    accs = {"sim": accumulate(cfg, "sim", _episodes("sim", 1)), "real": accumulate(cfg, "real", [])}
    with pytest.raises(InputDataError, match="'real' has no steps"):
        artifact_from_accumulators(cfg, accs, {"sim": "a", "real": "b"})
    accs["real"] = accumulate(cfg, "real", _episodes("real", 3, dim=5))
    with pytest.raises(InputDataError, match="dims differ across datasets"):
        artifact_from_accumulators(cfg, accs, {"sim": "a", "real": "b"})


def test_statistics_config_covers_the_accumulator_spec(tmp_path):
    """What the fingerprint says the statistics depend on is the accumulator spec plus the quantiles."""
    import dataclasses

    from stepnorm.config import parse_config

    cfg = parse_config({"horizon": 6, "delta_mask": [True, False], "sketch_k": 64, "quantiles": [0.01, 0.05, 0.99],
                        "datasets": [{"name": "d", "format": "rlds", "path": str(tmp_path), "action_key": "action"}]},
                       base_dir=tmp_path)
    spec = dataclasses.asdict(cfg.accumulator_spec())
    stats_cfg = cfg.statistics_config()
    assert set(stats_cfg) == set(spec) | {"quantiles"}
    assert all(stats_cfg[k] == (list(v) if isinstance(v, tuple) else v) for k, v in spec.items())
    assert stats_cfg["quantiles"] == [0.01, 0.05, 0.99]
