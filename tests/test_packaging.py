"""The wheel installs one import namespace: stepnorm (DESIGN: never a top-level `validators`)."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_the_stepnorm_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("stepnorm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"stepnorm", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "stepnorm = stepnorm.cli:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()
    for module in ("stepnorm/pipelines/stats.py", "stepnorm/pipelines/stats_beam.py", "stepnorm/validators/base.py", "stepnorm/stats/accumulator.py",
                   "stepnorm/sources/rlds.py", "stepnorm/exporters/openpi.py", "stepnorm/demo_data.py",
                   "stepnorm/validators/validators.yaml", "stepnorm/validators/templates/report.html.j2",
                   "stepnorm/integrations/lerobot.py", "stepnorm/schemas/config.schema.json",
                   "stepnorm/schemas/stats.schema.json"):
        assert module in names
