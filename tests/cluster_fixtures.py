"""Real local clusters for the runner tests, started once per session and always torn down.

- ``dask_cluster``: a ``dask scheduler`` and two ``dask worker`` processes (one thread each) on
  127.0.0.1; yields the scheduler address.
- ``portable_services``: Beam's ``local_job_service_main`` (the job endpoint) and
  ``worker_pool_main`` (SDK workers for ``--environment_type EXTERNAL``); yields the Beam args.

Also the two mixtures the runner tests use: ``sample_config`` (the built-in sample) and
``bridge_config`` (configs/real_data.yaml on the real Bridge data).

Ports are picked free, every process runs in its own session so teardown ends it and its children,
and start-up is bounded in time. The workers see ``tests/`` on their path, so a test can run its own
DoFns on them (the drop-injection tests).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
START_TIMEOUT = 90  # seconds; a 2-core machine shared with other jobs starts Python slowly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _end_with_parent() -> None:
    """In the child, before exec: Linux ends it (SIGTERM) if the test process dies without its
    teardown (killed), so no cluster outlives the test run."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def _processes(log_dir: Path):
    """Start processes with ``start(name, argv, env)``; all are ended (process group) on exit."""
    procs = []

    def start(name, argv, env):
        log = open(log_dir / f"{name}.log", "wb")
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_end_with_parent if sys.platform == "linux" else None),
                      log))
        return procs[-1][0]

    try:
        yield start
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc, log in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            log.close()


def _wait_for_port(port: int, proc, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT}s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def sample_config(tmp_path_factory):
    from stepnorm.cli import main

    out = tmp_path_factory.mktemp("sample")
    assert main(["sample", str(out)]) == 0
    return out / "config.yaml"


@pytest.fixture(scope="session")
def bridge_config(real_data, tmp_path_factory):
    """configs/real_data.yaml (Bridge train + val) with its paths pointed at the real data."""
    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "configs" / "real_data.yaml").read_text())
    for ds in cfg["datasets"]:
        ds["path"] = str(real_data / Path(ds["path"]).relative_to("../../shared/data/real"))
        if ds["name"] == "bridge":  # a TFDS catalog name: `run` refuses it as an output name
            ds["name"] = "bridge_train"
    path = tmp_path_factory.mktemp("bridge") / "real.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A real Dask cluster on 127.0.0.1: one scheduler, two single-thread worker processes."""
    pytest.importorskip("distributed", reason="Dask is not installed (pip install 'stepnorm[dask]')")
    from distributed import Client

    logs = tmp_path_factory.mktemp("dask_logs")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # At most one queued task per worker thread, so two tasks always go to two workers (Dask's
    # default lets a worker take 1.1 x its threads, rounded up, i.e. both).
    env = _env(DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0")
    with _processes(logs) as start:
        scheduler = start("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                        "127.0.0.1", "--port", str(port), "--no-dashboard"], env)
        _wait_for_port(port, scheduler, logs / "scheduler.log")
        for i in range(2):
            start(f"worker{i}", [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--name", f"worker{i}",
                                 "--local-directory", str(logs / f"worker{i}")], env)
        with Client(address, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
        yield address


@pytest.fixture(scope="session")
def portable_services(tmp_path_factory):
    """Beam's job service and an external SDK worker pool on 127.0.0.1; yields the Beam args."""
    logs = tmp_path_factory.mktemp("portable_logs")
    job_port, pool_port = free_port(), free_port()
    # The pool starts each SDK worker as `python -c ...`: the `python` on PATH must be this one.
    env = _env(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    with _processes(logs) as start:
        pool = start("worker_pool", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                     "--service_port", str(pool_port)], env)
        jobs = start("job_service", [sys.executable, "-m",
                                     "apache_beam.runners.portability.local_job_service_main", "--port",
                                     str(job_port)], env)
        _wait_for_port(pool_port, pool, logs / "worker_pool.log")
        _wait_for_port(job_port, jobs, logs / "job_service.log")
        yield ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}",
               "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool_port}"]
