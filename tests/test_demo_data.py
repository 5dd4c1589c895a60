"""`stepnorm sample DIR` (stepnorm.demo_data): the built-in demo mixture is written quietly (stepnorm's own line only)."""

import subprocess
import sys


def _sample(out):
    # A fresh interpreter, as `make demo` runs it: TensorFlow's and TFDS's start-up and builder
    # output would land on these pipes (file descriptors 1 and 2), not only in sys.stdout/stderr.
    return subprocess.run([sys.executable, "-c", "from stepnorm.cli import entry; entry()", "sample", str(out)],
                          capture_output=True, text=True, timeout=300)


def test_sample_prints_only_stepnorms_line(tmp_path):
    out = tmp_path / "sample"
    first = _sample(out)
    assert first.returncode == 0, first.stderr
    expected = f"sample mixture written; config: {out.resolve() / 'config.yaml'}\n"
    # before: "Downloading and preparing dataset ...", tqdm bars and absl warnings per dataset
    assert (first.stdout, first.stderr) == (expected, "")
    for name in ("sim_pick", "real_pick"):
        assert (out / name / "1.0.0" / "dataset_info.json").is_file()
    again = _sample(out)  # the datasets exist: reused, and just as quiet
    assert (again.returncode, again.stdout, again.stderr) == (0, expected, "")
