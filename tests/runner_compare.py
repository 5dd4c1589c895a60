"""Compare a stats artifact computed on another runner with the default runner's, and with the data.

Statistics are deterministic (exact quantiles, a fixed merge order; SPEC "Numerics"): every
runner's ``stats.json`` must equal the default runner's byte for byte (apart from ``created``), and
so must the normalized shards of ``run --force``. Each number is also checked against the data
(decoded by TFDS, independently of stepnorm's reader): counts, min and max exact, moments to a
relative 1e-12, each quantile within ``RANK_TOL`` of its rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from reference import RANK_TOL, chunk_entries, rank_error

MOMENT_RTOL = 1e-12
# Top-level entries that name the run, not the statistics.
RUN_KEYS = {"created"}


def load_stats(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def config_data(config_path: Path) -> dict:
    """Per dataset and ``combined``: the reference values each statistics block describes."""
    import tensorflow_datasets as tfds

    cfg = yaml.safe_load(Path(config_path).read_text())
    assert cfg.get("weighting", "samples") == "samples", "the reference pools datasets by sample"
    base = Path(config_path).parent
    horizon, delta = cfg["horizon"], cfg.get("delta_mask")
    def pick(step, key):
        return pick(step[key[0]], key[1:]) if key else step

    episodes_by_name = {}
    for ds in cfg["datasets"]:
        assert ds["format"] == "rlds" and not ds.get("transforms"), "reference covers plain RLDS datasets"
        builder = tfds.builder_from_directory(str(base / ds["path"]))
        action_key, state_key = ds["action_key"].split("/"), ds["state_key"].split("/")
        eps = []
        for ep in tfds.as_numpy(builder.as_dataset(split=ds["split"])):
            steps = list(ep["steps"])
            eps.append((np.stack([pick(s, action_key) for s in steps]).astype(np.float64),
                        np.stack([pick(s, state_key) for s in steps]).astype(np.float64)))
        episodes_by_name[ds["name"]] = eps

    def blocks(eps):
        per_k = chunk_entries(eps, horizon, delta)
        return {"per_timestep": per_k, "global": per_k[0], "pooled": np.concatenate(per_k),
                "raw": np.concatenate([a for a, _ in eps]),  # the stored actions (delta_mask configs)
                "state": np.concatenate([s for _, s in eps])}

    data = {name: blocks(eps) for name, eps in episodes_by_name.items()}
    data["combined"] = blocks([ep for eps in episodes_by_name.values() for ep in eps])
    return data


def assert_same_stats(local: dict, other: dict, data: dict) -> None:
    """``other`` (another runner's stats.json) describes the same data as ``local`` (the default's)."""
    strip = lambda doc, also=(): {k: v for k, v in doc.items() if k not in RUN_KEYS | set(also)}  # noqa: E731
    assert json.dumps(strip(local), sort_keys=True) == json.dumps(strip(other), sort_keys=True)
    local, other = strip(local, ["checksum"]), strip(other, ["checksum"])
    quantile_keys = {f"q{int(round(q * 100)):02d}" for q in local["quantiles"]}
    checked = {"quantile": 0, "moment": 0}

    def values_for(path):
        owner = path[1] if path[0] == "datasets" else "combined"
        rest = path[2:] if path[0] == "datasets" else path[1:]
        field, block = rest[0], rest[1]
        return data[owner]["state" if field == "state" else block]

    def walk(a, b, path):
        where = "/".join(map(str, path))
        if isinstance(a, dict):
            assert set(a) == set(b), f"{where}: keys differ"
            for key in a:
                walk(a[key], b[key], path + (key,))
            return
        key = path[-1]
        if key in quantile_keys:
            q = int(key[1:]) / 100
            values = values_for(path)
            if isinstance(values, list):  # per_timestep: [H][D] against each position's entries
                for k, (row_a, row_b) in enumerate(zip(a, b)):
                    for d, v in enumerate(row_b):
                        err = rank_error(values[k][:, d], v, q)
                        assert err <= RANK_TOL, f"{where}[{k}][{d}]: rank error {err} > {RANK_TOL}"
            else:
                for d, v in enumerate(b):
                    err = rank_error(values[:, d], v, q)
                    assert err <= RANK_TOL, f"{where}[{d}]: rank error {err} > {RANK_TOL}"
            checked["quantile"] += 1
        elif key in ("mean", "std"):
            np.testing.assert_allclose(np.asarray(b, float), np.asarray(a, float), rtol=MOMENT_RTOL, atol=1e-300,
                                       err_msg=where)
            checked["moment"] += 1
        else:  # counts, min, max, names, fingerprints, the config: exactly equal
            assert a == b, f"{where}: {a!r} != {b!r}"

    walk(local, other, ())
    assert checked["quantile"] and checked["moment"]


def run_cli(args, capsys, cache: Path | None = None):
    """``stepnorm ARGS`` in-process: (exit code, stdout, stderr); with ``cache``, reading into that
    values cache (a fresh one makes the runner under test read every task itself)."""
    import os

    from stepnorm.cli import main

    capsys.readouterr()
    saved = os.environ.get("STEPNORM_CACHE")
    if cache is not None:
        os.environ["STEPNORM_CACHE"] = str(cache)
    try:
        code = main(args)
    finally:
        if saved is not None:
            os.environ["STEPNORM_CACHE"] = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_against_default_runner(cfg: Path, runner_args: list[str], tmp_path: Path, capsys) -> str:
    """``run --force`` (statistics, gate, normalize) with ``runner_args`` gives what the default
    runner gives.

    Statistics as ``assert_same_stats``; normalized shards byte-identical to the default runner's
    from the same statistics and to its ``run --force``; episode counts in
    the manifest. Returns the run's stdout for runner-specific checks.
    """
    from stepnorm.cli import main

    code, _, _ = run_cli(["run", str(cfg), "--out", str(tmp_path / "local"), "--force"], capsys,
                         cache=tmp_path / "cache-local")
    assert code == 0
    local = load_stats(tmp_path / "local" / "stats" / "stats.json")
    n = len(local["datasets"])
    code, out, _ = run_cli(["run", str(cfg), "--out", str(tmp_path / "other"), "--force"] + runner_args, capsys,
                           cache=tmp_path / "cache-other")
    assert code == 0
    assert_same_stats(local, load_stats(tmp_path / "other" / "stats" / "stats.json"), config_data(cfg))
    assert assert_same_shards(tmp_path / "local" / "normalized", tmp_path / "other" / "normalized") == n
    # The other runner's normalize writes exactly what the default runner writes from the same statistics.
    assert main(["normalize", str(cfg), "--stats", str(tmp_path / "other" / "stats"),
                 "--out", str(tmp_path / "local_from_other_stats")]) == 0
    assert assert_same_shards(tmp_path / "local_from_other_stats", tmp_path / "other" / "normalized") == n
    manifest = json.loads((tmp_path / "other" / "normalized" / "MANIFEST.json").read_text())
    assert {name: d["episodes"] for name, d in manifest["datasets"].items()} == {
        name: block["num_episodes"] for name, block in local["datasets"].items()}
    return out


def corrupt_sample(sample_config: Path, tmp_path: Path) -> Path:
    """A copy of the sample mixture with bytes of real_pick's train shard overwritten; its config."""
    import shutil

    root = tmp_path / "sample"
    shutil.copytree(sample_config.parent, root)
    shard = sorted((root / "real_pick" / "1.0.0").glob("*train.tfrecord*"))[0]
    data = bytearray(shard.read_bytes())
    data[200:260] = b"\xff" * 60
    shard.write_bytes(bytes(data))
    return root / "config.yaml"


def check_same_error(config: Path, runner_args: list[str], tmp_path: Path, capsys) -> None:
    """``stats`` fails with the same exit code and one-line error as on the default runner."""
    local = run_cli(["stats", str(config), "--out", str(tmp_path / "local")], capsys, cache=tmp_path / "cache-local")
    other = run_cli(["stats", str(config), "--out", str(tmp_path / "other")] + runner_args, capsys,
                    cache=tmp_path / "cache-other")
    assert local[0] == other[0] == 2
    assert len(local[2].splitlines()) == 1 and local[2].startswith("stepnorm: error: ")
    assert "real_pick-train.tfrecord" in local[2]
    assert other[2] == local[2]
    assert not (tmp_path / "other").exists()


def assert_same_shards(a: Path, b: Path) -> int:
    """The two normalized outputs hold the same TFRecord shards, byte for byte; returns how many."""
    names = sorted(p.relative_to(a) for p in Path(a).rglob("*.tfrecord-*"))
    assert names == sorted(p.relative_to(b) for p in Path(b).rglob("*.tfrecord-*"))
    for name in names:
        assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), f"{name} differs"
    return len(names)
