"""The HTML report, opened in headless Chromium: the plots and the findings table are on the page."""

import base64
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from test_validators import build, gate, make_episodes

from stepnorm.validators import run_gate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path, *args):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make browser installs Debian's package)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class _Page(HTMLParser):
    """Images (src) and the findings table's rows (cell texts) of the rendered DOM."""

    def __init__(self):
        super().__init__()
        self.images, self.rows, self._in_findings, self._row, self._cell = [], [], False, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((attrs.get("alt"), attrs.get("src", "")))
        elif tag == "table" and attrs.get("id") == "findings-table":
            self._in_findings = True
        elif self._in_findings and tag == "tr":
            self._row = []
        elif self._row is not None and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._in_findings = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_report_in_headless_chromium(tmp_path, sample_dir):
    cfg, art = build(tmp_path, sample_dir, make_episodes(1, gripper="continuous", half_width=0.25), make_episodes(2))
    result = run_gate(cfg, art, tmp_path / "report")
    assert not result.passed
    page = tmp_path / "report" / "report.html"
    run = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = _Page()
    dom.feed(run.stdout)
    alts = [alt for alt, src in dom.images if src.startswith("data:image/png;base64,")]
    assert alts == ["Per-timestep action statistics", "Gripper histograms", "Workspace boxes"]
    for _, src in dom.images:  # each is a real PNG
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    header, *rows = dom.rows
    assert header[:2] == ["severity", "id"] and len(rows) == len(result.findings)
    shown = {(r[0], r[1]) for r in rows}
    assert ("error", "gripper.continuous_vs_quantized") in shown and ("error", "workspace.sim_outside_real") in shown
    # and it renders: a screenshot of the page is a non-trivial PNG
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri())
    assert run.returncode == 0 and shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
