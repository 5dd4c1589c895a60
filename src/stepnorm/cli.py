"""`stepnorm` command line (SPEC section 7). Exit codes: 0 success, 1 gate failed, 2 usage/input error.

Each subcommand lives in the module that implements it; this file only parses arguments and turns
``StepnormError`` into one readable line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from stepnorm.errors import StepnormError


def _export(args: argparse.Namespace) -> int:
    import warnings

    from stepnorm.exporters import run_export
    from stepnorm.normalize import DecisionWarning

    per_timestep = {"auto": None, "on": True, "off": False}[args.per_timestep]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DecisionWarning)
        written = run_export(args.dir, args.format, args.out, dataset=args.dataset, per_timestep=per_timestep,
                             config=args.config)
    for warning in caught:  # the export differs from the artifact's decision: one line each
        if issubclass(warning.category, DecisionWarning):
            print(f"stepnorm: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    for path in written:
        print(f"wrote {path}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from stepnorm.config import load_config
    from stepnorm.pipelines.stats import run_stats

    cfg = load_config(args.config)
    print(f"stepnorm stats: {len(cfg.datasets)} datasets, H={cfg.horizon}, weighting={cfg.weighting}")
    result = run_stats(cfg, args.out, args.beam_args, force=args.force, cache=args.cache, stage2=args.stage2)
    print(f"stats artifact: {result.stats_path} ({result.seconds:.1f}s)")
    return 0


def _normalize(args: argparse.Namespace) -> int:
    from stepnorm.config import load_config
    from stepnorm.pipelines.normalize import run_normalize

    cfg = load_config(args.config)
    print(f"stepnorm normalize: {len(cfg.datasets)} datasets, H={cfg.horizon}, statistics: {cfg.normalize_with}")
    result = run_normalize(cfg, args.stats, args.out, args.beam_args)
    print(f"normalized datasets: {result.out_dir} ({result.seconds:.1f}s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from stepnorm.config import load_config
    from stepnorm.pipelines.run import run_all

    cfg = load_config(args.config)
    print(f"stepnorm run: {len(cfg.datasets)} datasets, H={cfg.horizon} -> {args.out}")
    result = run_all(cfg, args.out, args.beam_args, force=args.force)
    print(f"stats artifact:      {result.stats_dir / 'stats.json'}")
    print(f"report:              {result.report_dir / 'report.html'}")
    print(f"normalized datasets: {result.normalized_dir or '(none: the gate failed)'}")
    return result.exit_code


def _validate(args: argparse.Namespace) -> int:
    from stepnorm.validators.base import validate

    return validate(args.config, args.report, args.stats, args.beam_args).exit_code


def _sample(args: argparse.Namespace) -> int:
    from stepnorm.demo_data import write_sample

    config = write_sample(args.dir)
    print(f"sample mixture written; config: {config}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``stepnorm: error: ...``) and exit code 2."""

    def error(self, message: str):
        print(f"stepnorm: error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _cache(args: argparse.Namespace) -> int:
    from stepnorm import values

    cache = values.ValuesCache(args.cache)
    if args.action == "ls":
        for line in values.list_entries(cache):
            print(line)
        return 0
    if args.action == "rm":
        n, freed = values.remove_entries(cache, args.keys, args.dataset)
    else:
        max_bytes = None if args.max_size is None else values.parse_size(args.max_size)
        n, freed = values.prune_entries(cache, args.older_than, max_bytes)
    print(f"removed {n} entries ({values.format_size(freed)}) from {cache.values_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stepnorm", description="Per-timestep action-chunk statistics for robot datasets")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (and Beam's logs)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("stats", help="per-dataset and combined statistics artifact (Beam)")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="artifact directory")
    p.add_argument("--force", action="store_true", help="read every dataset again (rebuild its values cache entry)")
    p.add_argument("--cache", default=None,
                   help="values cache directory (default $STEPNORM_CACHE, else $XDG_CACHE_HOME/stepnorm or ~/.cache/stepnorm)")
    p.add_argument("--stage2", choices=["auto", "local", "beam"], default="auto",
                   help="where the statistics are computed from the cached values: this process, the Beam "
                        "runner's workers (one dataset per call), or auto (Beam on a multi-process runner for a "
                        "mixture whose numeric values exceed 512 MB; the same artifact either way)")
    p.set_defaults(func=_stats, accepts_beam_options=True)

    p = sub.add_parser("cache", help="the values cache: ls, rm (entries or a dataset's), prune (by age or size)")
    p.add_argument("action", choices=["ls", "rm", "prune"])
    p.add_argument("keys", nargs="*", help="rm: entry keys (or prefixes) as `cache ls` prints them")
    p.add_argument("--cache", default=None, help="values cache directory (default as for `stepnorm stats`)")
    p.add_argument("--dataset", default=None, help="rm: every entry of this dataset name")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="prune: entries unused this long")
    p.add_argument("--max-size", default=None, metavar="SIZE",
                   help="prune: least recently used entries until at most SIZE (e.g. 20G) remain")
    p.set_defaults(func=_cache)

    p = sub.add_parser("normalize", help="write pre-normalized TFDS datasets (Beam)")
    p.add_argument("config")
    p.add_argument("--stats", required=True, help="stats artifact directory (must match the config)")
    p.add_argument("--out", required=True, help="output directory (replaced atomically when complete)")
    p.set_defaults(func=_normalize, accepts_beam_options=True)

    p = sub.add_parser("run", help="stats, gate, normalize into OUT/{stats,report,normalized}; stops at a failed gate")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--force", action="store_true", help="normalize even when the gate fails (prints a warning)")
    p.set_defaults(func=_run, accepts_beam_options=True)

    p = sub.add_parser("validate", help="run the validators (the training gate); exit 0 pass, 1 errors found")
    p.add_argument("config")
    p.add_argument("--stats", default=None, help="stats artifact directory (default: compute into REPORT/stats)")
    p.add_argument("--report", required=True, help="report directory (report.json, report.html)")
    p.set_defaults(func=_validate, accepts_beam_options=True)

    p = sub.add_parser("sample", help="write the built-in sample mixture (two RLDS datasets) and its config")
    p.add_argument("dir")
    p.set_defaults(func=_sample)

    p = sub.add_parser("export", help="export statistics for openpi, LeRobot, Octo/OpenVLA or robomimic")
    p.add_argument("dir", help="stats artifact directory (or its stats.json)")
    p.add_argument("--format", required=True, choices=["openpi", "lerobot", "octo", "robomimic"])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dataset", default=None, help="one dataset's statistics instead of the combined ones")
    p.add_argument("--per-timestep", choices=["auto", "on", "off"], default="auto",
                   help="per-timestep action statistics (auto: the artifact's decision, "
                        "normalization.action.per_timestep; on/off override it with a warning)")
    p.add_argument("--config", default=None, help="refuse to export if the artifact is stale for this config")
    p.set_defaults(func=_export)
    return parser


class _BeamNoise(logging.Filter):
    """Beam warns about optional Google Cloud clients on every import, about options it discards
    (which stepnorm reports itself, as an error) and, relayed from each multi_processing worker,
    about a cache directory local workers never have; all noise on the command line."""

    NOISE = ("apitools not found", "Discarding unparseable args", "No semi_persistent_directory found")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 done, 1 the gate found errors, 2 anything else).

    Every failure is one line on stderr, ``stepnorm: error: <file>: <problem>``; ``--debug`` adds
    the traceback.
    """
    for logger in ("", "apache_beam.options.pipeline_options", "apache_beam.runners.portability.local_job_service"):
        logging.getLogger(logger).addFilter(_BeamNoise())
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    parser = build_parser()
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if debug:  # also seen by the pipelines (worker output) and by Beam workers this process starts
        os.environ["STEPNORM_DEBUG"] = "1"
    if extra and not getattr(args, "accepts_beam_options", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    if not args.debug:  # Beam logs worker failures with their tracebacks; stepnorm prints its own line
        beam_logger.setLevel(logging.CRITICAL)
    try:
        if extra:  # fail before any work, even when every dataset would come from the cache
            from stepnorm.pipelines.stats_beam import make_pipeline_options

            make_pipeline_options(extra)
        return int(args.func(args) or 0)
    except StepnormError as exc:
        return _fail(args, exc, str(exc), exc.exit_code)
    except OSError as exc:  # disk full, read-only filesystem, permissions, ...
        where = exc.filename or "<filesystem>"
        return _fail(args, exc, f"{where}: {exc.strerror or exc}")
    except KeyboardInterrupt as exc:
        return _fail(args, exc, "interrupted; nothing unfinished was published")
    except Exception as exc:  # a bug or a crashed worker: still one line and exit 2
        text = " ".join(str(exc).split())[:300]
        return _fail(args, exc, f"internal error ({type(exc).__name__}: {text}); rerun with --debug for the "
                                f"traceback")
    finally:
        beam_logger.setLevel(level)


def _fail(args: argparse.Namespace, exc: BaseException, line: str, code: int = 2) -> int:
    if args.debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    print(f"stepnorm: error: {line}", file=sys.stderr)
    return code


def entry() -> None:
    """The ``stepnorm`` command: ``main()``, then a quick exit.

    Tearing down the interpreter after a run (thousands of Beam, TFDS and TensorFlow-proto modules
    and their objects) takes ~0.4 s, a large share of a small or incremental run. Everything
    stepnorm writes is closed by then, so the command flushes stdout/stderr, runs the exit handlers
    (``atexit``, ``weakref.finalize``) and leaves without the teardown. ``main()`` itself returns
    normally, for callers in the same process.
    """
    import atexit
    import os

    try:
        code = main()
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
