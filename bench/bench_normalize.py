"""Benchmark of `stepnorm normalize` against two copies of the same shards (not a test).

Every method runs in its own subprocess with the same Beam runner options (wall time includes
start-up), on an OXE-like RLDS dataset from bench/oxe_like.py whose pages are warm in the cache:
  (0) file-copy    shutil.copyfile of every shard (no Beam, no framing): the disk floor, for scale
  (a) plain-copy   Beam ReadFromTFRecord -> WriteToTFRecord, nothing parsed (the I/O floor)
  (b) tfds-copy    per input shard: TFDS's example parser decodes every feature of every episode
                   (images stay encoded bytes), TFDS's serializer re-encodes it, Beam's TFRecord
                   framing writes it; no normalization (what any "read, add, write" job pays)
  (c) normalize    `stepnorm normalize` (H=50 chunks, q01_q99 actions, mean_std state)
Statistics are computed once beforehand and not timed. Targets: (c) <= 1.5x (b) and <= 3x (a).

Usage: python bench/bench_normalize.py [--data /tmp/bench_norm] [--size-gb 1.3] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PY = sys.executable
HORIZON = 50

FILE_COPY = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    for shard in sorted(src.glob("*.tfrecord-*")):
        shutil.copyfile(shard, dst / shard.name)
""")

PLAIN_COPY = textwrap.dedent("""
    import sys, apache_beam as beam
    from stepnorm.pipelines.stats_beam import make_pipeline_options
    src, dst, shards, *beam_args = sys.argv[1:]
    options, runner = make_pipeline_options(beam_args)
    with beam.Pipeline(runner=runner, options=options) as p:
        _ = (p | beam.io.ReadFromTFRecord(src + "/*.tfrecord-*")
               | beam.io.WriteToTFRecord(dst + "/copy.tfrecord", num_shards=int(shards)))
""")

TFDS_COPY = textwrap.dedent("""
    import os, sys, apache_beam as beam
    from apache_beam.io.filesystems import CompressionTypes, FileSystems
    from apache_beam.io.tfrecordio import _TFRecordUtil
    from stepnorm.pipelines.stats_beam import make_pipeline_options
    from stepnorm.sources.rlds import iter_shard_records, rlds_builder, shard_reads

    class CopyShard(beam.DoFn):
        def __init__(self, src, dst):
            self.src, self.dst = src, dst
        def setup(self):
            from tensorflow_datasets.core import example_parser, example_serializer
            info = rlds_builder(self.src).info.features.get_serialized_info()
            self.parser = example_parser.ExampleParserNp(info)
            self.serializer = example_serializer.ExampleSerializer(info)
        def process(self, read):
            path = os.path.join(self.dst, os.path.basename(read.filename))
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                for record in iter_shard_records(read):
                    example = self.parser.parse_example(record)
                    _TFRecordUtil.write_record(handle, self.serializer.serialize_example(example))

    src, dst, *beam_args = sys.argv[1:]
    options, runner = make_pipeline_options(beam_args)
    with beam.Pipeline(runner=runner, options=options) as p:
        _ = p | beam.Create(shard_reads(src, "train")) | beam.Reshuffle() | beam.ParDo(CopyShard(src, dst))
""")


def _timed(args: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.monotonic() - t0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and ".tfrecord" in f.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/bench_norm")
    parser.add_argument("--size-gb", type=float, default=1.3)
    parser.add_argument("--workers", type=int, default=1, help="> 1: Beam multi_processing with this many workers")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from oxe_like import write_oxe_like

    from stepnorm.config import load_config
    from stepnorm.pipelines.stats import run_stats

    data = Path(args.data).resolve()
    name = f"oxe_like_{str(args.size_gb).replace('.', '_')}gb"
    src = write_oxe_like(data, args.size_gb, name=name)
    shards = sorted(src.glob("*.tfrecord-*"))
    in_bytes = sum(f.stat().st_size for f in shards)
    config = {
        "horizon": HORIZON, "quantiles": [0.01, 0.99],
        "normalization": {"action": {"mode": "q01_q99", "mask": [True] * 6 + [False]}, "state": {"mode": "mean_std"}},
        "datasets": [{"name": name, "format": "rlds", "path": str(src), "split": "train", "action_key": "action",
                      "state_key": "observation/state", "image_keys": ["observation/image"]}],
    }
    cfg_path = data / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    stats = data / f"{name}-stats"
    run_stats(load_config(cfg_path), stats, log=lambda *a: None)
    beam_args = (["--direct_running_mode", "multi_processing", "--direct_num_workers", str(args.workers)]
                 if args.workers > 1 else [])
    for f in shards:  # warm the page cache so every method reads from memory
        f.read_bytes()

    runs = {}
    out_root = data / f"{name}-out"
    for method in ("file-copy", "plain-copy", "tfds-copy", "normalize"):
        out = out_root / method
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if method == "file-copy":
            cmd = [PY, "-c", FILE_COPY, str(src), str(out)]
        elif method == "plain-copy":
            cmd = [PY, "-c", PLAIN_COPY, str(src), str(out), str(len(shards)), *beam_args]
        elif method == "tfds-copy":
            cmd = [PY, "-c", TFDS_COPY, str(src), str(out), *beam_args]
        else:
            cmd = [PY, "-m", "stepnorm.cli", "normalize", str(cfg_path), "--stats", str(stats), "--out",
                   str(out / "normalized"), *beam_args]
        seconds = _timed(cmd)
        runs[method] = (seconds, _size(out))
        shutil.rmtree(out, ignore_errors=True)

    print(f"\ninput: {src} ({in_bytes / 1e9:.2f} GB, {len(shards)} shards), H={HORIZON}, "
          f"workers={args.workers}, {os.cpu_count()} CPUs")
    print(f"{'method':12s} {'wall s':>8s} {'in MB/s':>8s} {'out GB':>7s} {'/plain':>7s} {'/tfds':>7s}")
    plain, tfds_copy = runs["plain-copy"][0], runs["tfds-copy"][0]
    for method, (seconds, out_bytes) in runs.items():
        print(f"{method:12s} {seconds:8.1f} {in_bytes / 1e6 / seconds:8.0f} {out_bytes / 1e9:7.2f} "
              f"{seconds / plain:7.2f} {seconds / tfds_copy:7.2f}")
    norm = runs["normalize"][0]
    print(f"targets: normalize <= 1.5x tfds-copy ({norm / tfds_copy:.2f}x), <= 3x plain-copy ({norm / plain:.2f}x)")


if __name__ == "__main__":
    main()
