"""What the benchmarks share: one subprocess, timed (standard library only, so a benchmark's parent
process stays free of numpy and the data it measures)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time


def run_output(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one subprocess (exits on failure)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{err.read().decode(errors='replace')[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode(errors="replace")
