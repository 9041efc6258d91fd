"""The HTML audit report gives a verdict: checked as markup, as a coverage-over-time series computed from
run records, and laid out in headless Chromium (no horizontal overflow, no wrapped cell, aligned bars)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.jobs.audit import CoverageStatus
from orchestrator.report.chart import coverage_series
from orchestrator.report.html import render_html, verdict
from tests.conftest import CliRun, LabFiles
from tests.test_audit import DAY, MAX_AGE, NOW, Fleet
from tests.test_audit_e2e import audit, browse, chromium, golden, lab, showcase  # noqa: F401 - fixtures

Keyfleet = Callable[..., CliRun]


def test_verdicts(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    assert verdict(fleet.audit()) == ("OK", "all 6 server(s) have an intact backup younger than 30d")
    assert verdict(fleet.audit(max_age=DAY))[0] == "COVERAGE BELOW POLICY"
    fleet.file("dw01").unlink()
    word, why = verdict(fleet.audit())
    assert word == "INTEGRITY FAILURE" and "1 server(s) with an altered or lost backup" in why
    page = render_html(fleet.audit())
    assert '<p class="verdict verdict-3"><strong>INTEGRITY FAILURE</strong>' in page
    counts = dict(re.findall(r'<li class="count-(\w+)"[^>]*><b>(\d+)</b>', page))
    assert counts == {str(s): str(fleet.audit().counts[s]) for s in CoverageStatus} and counts["lost"] == "1"
    assert "<dfn>recoverable: servers with at least one intact backup" in page


def test_coverage_over_time_from_run_records(tmp_path: Path) -> None:
    """ms01 alone 50 days ago (1 of 3 management servers for max_age 30 days), everyone 2 days ago."""
    fleet = Fleet(tmp_path)  # backs every server up at NOW - 2 days
    fleet.backup(NOW - 50 * DAY, ["ms01"])
    report = fleet.audit()
    series = {
        s.role: dict((p[0].date(), p[1]) for p in s.points) for s in coverage_series(report, fleet.store.run_records())
    }
    ms = series["management_server"]
    assert min(ms) == (NOW - 50 * DAY).date()  # nothing before the first run record
    assert ms[(NOW - 50 * DAY).date()] == pytest.approx(100 / 3)
    assert ms[(NOW - 50 * DAY + MAX_AGE - DAY).date()] == pytest.approx(100 / 3)
    assert ms[(NOW - 10 * DAY).date()] == 0  # that backup was older than max_age by then
    assert ms[NOW.date()] == 100 and series["dw_management_server"][(NOW - 30 * DAY).date()] == 0
    page = render_html(report, fleet.store.run_records())
    assert page.count('<polyline class="series"') == 3 and "<script" not in page
    assert render_html(report).count("No backup run records on the share yet") == 1


# A test-side page (never the report) that lays the report out in a 1280 px frame and writes measurements.
MEASURE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="report" src="REPORT" style="width:1280px;height:4000px;border:0"></iframe><pre id="out"></pre>
<script>
window.addEventListener("load", () => {
  const d = document.getElementById("report").contentDocument;
  const lines = (el) => {
    const r = d.createRange(); r.selectNodeContents(el);
    let count = 0, bottom = -Infinity;  // rects that overlap vertically are on one line (mixed font sizes)
    for (const x of [...r.getClientRects()].filter((x) => x.width > 0).sort((a, b) => a.top - b.top)) {
      if (x.top >= bottom - 1) { count += 1; bottom = x.bottom; } else { bottom = Math.max(bottom, x.bottom); }
    }
    return count;
  };
  const bars = [...d.querySelectorAll(".bar")].map((bar) => {
    const fill = bar.querySelector(".fill");
    return { name: bar.closest("tr").querySelector("td").textContent, left: bar.getBoundingClientRect().left,
             ratio: fill.getBoundingClientRect().width / bar.clientWidth, style: fill.getAttribute("style") };
  });
  const wrapped = [...d.querySelectorAll("td.nw, .status, .bars td, th, .counts li")]
    .filter((el) => lines(el) > 1).map((el) => el.textContent);
  const v = d.querySelector(".verdict");
  document.getElementById("out").textContent = JSON.stringify({
    scrollWidth: d.documentElement.scrollWidth, clientWidth: d.documentElement.clientWidth, bars, wrapped,
    verdict: v.textContent, verdictBackground: getComputedStyle(v).backgroundColor,
    polylines: d.querySelectorAll("svg.chart polyline").length, text: d.body.innerText,
  });
});
</script></body></html>"""


def measure(browser: str, tmp_path: Path, report: Path) -> dict[str, object]:
    page = tmp_path / "measure.html"
    page.write_text(MEASURE.replace("REPORT", report.name))
    dom = browse(
        browser,
        tmp_path,
        "measure",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        "--window-size=1400,1000",
        "--dump-dom",
        page.as_uri(),
    ).stdout.decode()
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert found and found[1], dom[-2000:]
    return json.loads(found[1].replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


@pytest.mark.e2e
def test_integrity_failure_in_a_real_browser(
    chromium: str,  # noqa: F811
    showcase: LabFiles,  # noqa: F811
    keyfleet: Keyfleet,
    tmp_path: Path,
) -> None:
    _, document = audit(keyfleet, showcase)
    report = tmp_path / "coverage.html"
    assert keyfleet("audit", "-i", str(showcase.inventory), "--format", "html", "-o", str(report)).returncode == 3
    got = measure(chromium, tmp_path, report)
    assert got["scrollWidth"] <= got["clientWidth"] == 1280  # no horizontal overflow
    assert got["wrapped"] == []  # no group name, age, hash, status or bar label broken over two lines
    assert str(got["verdict"]).startswith("INTEGRITY FAILURE")
    assert got["verdictBackground"] == "rgb(207, 34, 46)"  # red, not purple
    bars = got["bars"]
    assert isinstance(bars, list) and len(bars) == len(document["roles"]) + len(document["groups"])
    assert len({round(b["left"]) for b in bars}) == 1  # role and group bars start at one x
    for bar in bars:
        percent = float(re.fullmatch(r"width:([\d.]+)%", bar["style"])[1])  # type: ignore[index]
        assert bar["ratio"] == pytest.approx(percent / 100, abs=0.01)
    text = str(got["text"])
    for status in ("covered", "failing", "missing", "altered", "lost"):
        assert re.search(rf"\b{document['summary'][status]}\s*{status}\b", text), status
    assert "recoverable: servers with at least one intact backup" in text
    assert got["polylines"] == 3  # one line per role, from the two backup runs on the share


@pytest.mark.e2e
def test_full_coverage_in_a_real_browser(chromium: str, lab: LabFiles, keyfleet: Keyfleet, tmp_path: Path) -> None:  # noqa: F811
    report = tmp_path / "coverage.html"
    assert keyfleet("audit", "-i", str(lab.inventory), "--format", "html", "-o", str(report)).returncode == 0
    got = measure(chromium, tmp_path, report)
    assert str(got["verdict"]).startswith("OK") and got["verdictBackground"] == "rgb(218, 251, 225)"
    assert got["wrapped"] == [] and got["scrollWidth"] <= got["clientWidth"]


def test_long_paths_wrap_inside_the_page(chromium: str, tmp_path: Path) -> None:  # noqa: F811
    """A lost key file's path in the detail column breaks where it must instead of widening the page."""
    fleet = Fleet(tmp_path / "fleet")
    fleet.backup(NOW - 50 * DAY, ["ms01", "dw01"])
    fleet.file("dw01").unlink()
    report = tmp_path / "coverage.html"
    report.write_text(render_html(fleet.audit(), fleet.store.run_records()))
    got = measure(chromium, tmp_path, report)
    assert got["scrollWidth"] <= got["clientWidth"] and got["wrapped"] == []
    assert str(got["verdict"]).startswith("INTEGRITY FAILURE") and got["polylines"] == 3
