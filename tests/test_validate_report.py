"""Reports: Markdown, self-contained HTML with SVG charts (structure always; headless Chromium when present)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import cli, sample
from onnxsparse.validate import bench, render_markdown, save_report, validate
from test_validate_support import DIGITS_X, DIGITS_Y, edited_digits

CHROMIUM = Path("/usr/bin/chromium")
RUNS = 7


class _Collect(HTMLParser):
    """Start tags with their attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Collect()
    parser.feed(html)
    return parser.tags


def _charts(html: str) -> dict[str, dict[str, list[dict[str, str]]]]:
    """kind of chart -> {"points": [...], "series": [...]} from the markup."""
    charts: dict[str, dict[str, list]] = {}
    current = None
    for tag, attrs in _tags(html):
        if tag == "svg":
            kind = attrs.get("class", "").replace("chart", "").strip()
            current = charts.setdefault(kind, {"points": [], "series": []})
        elif current is not None and tag == "circle" and "pt" in attrs.get("class", "").split():
            current["points"].append(attrs)
        elif current is not None and tag == "g" and attrs.get("class") == "series":
            current["series"].append(attrs)
    return charts


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    cand = edited_digits(tmp_path_factory.mktemp("rep") / "cand.onnx", kill_class=3)
    return validate(sample("digits_cnn"), cand, data=DIGITS_X, labels=DIGITS_Y, runs=RUNS, warmup=1,
                    memory=False, max_accuracy_drop=0.01)


@pytest.fixture(scope="module")
def html_path(result, tmp_path_factory):
    return save_report(tmp_path_factory.mktemp("html") / "report.html", result)


def _check_validation_charts(charts, result):
    box = charts["box-plot"]
    assert [s["data-label"] for s in box["series"]] == ["cpu · reference", "cpu · candidate"]
    assert [int(s["data-count"]) for s in box["series"]] == [RUNS, RUNS]
    assert len(box["points"]) == 2 * RUNS
    p = result.providers[0]
    timed = sorted(p.reference.latency.samples_ms + p.candidate.latency.samples_ms)
    assert sorted(float(pt["data-value"]) for pt in box["points"]) == pytest.approx(timed, rel=1e-5)
    scatter = charts["scatter"]["points"]
    assert [float(pt["data-x"]) for pt in scatter] == [result.reference.file_bytes, result.candidate.file_bytes]
    assert [float(pt["data-value"]) for pt in scatter] == pytest.approx(
        [p.metrics[0].reference, p.metrics[0].candidate], rel=1e-5)


def test_html_structure_is_self_contained_with_charts(html_path, result):
    html = html_path.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>")
    tags = _tags(html)
    names = [t for t, _ in tags]
    assert "script" not in names and "link" not in names and "img" not in names
    external = [a for _, attrs in tags for k, a in attrs.items() if k in ("src", "href") and a]
    assert external == []  # nothing to fetch: opens offline
    assert names.count("svg") == 2
    _check_validation_charts(_charts(html), result)
    assert "FAILED" in html and "max_accuracy_drop" in html  # the verdict is on the page
    assert html.count("<table>") == 5  # models, latency, accuracy, fidelity, checks


def test_markdown_report(result, tmp_path):
    md = render_markdown(result)
    assert md.startswith("# onnxsparse validate: FAILED")
    assert "| provider | metric | output | reference | candidate | drop |" in md
    assert "## Fidelity (candidate vs reference outputs)" in md and "| cpu | top1 | logits |" in md
    path = save_report(tmp_path / "r.md", result)
    assert path.read_text(encoding="utf-8") == md


def test_bench_html_and_cli_reports(tmp_path):
    html = tmp_path / "bench.html"
    js = tmp_path / "bench.json"
    code, out, err = cli("bench", sample("digits_cnn"), sample("resnet_mini"), "--batch", "1,2", "--runs", "4",
                         "--warmup", "0", "--no-memory", "--report", html, "--report", js, "-q")
    assert code == 0, err
    charts = _charts(html.read_text(encoding="utf-8"))
    assert len(charts["box-plot"]["series"]) == 4 and len(charts["box-plot"]["points"]) == 16
    assert [p["data-value"] for p in charts["scatter"]["points"]] and len(charts["scatter"]["points"]) == 2
    assert js.read_text().startswith("{") and "report written to" in err


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)})


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_html_renders_in_headless_chromium(html_path, result, tmp_path):
    dom = _chromium("--dump-dom", html_path.resolve().as_uri(), tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    _check_validation_charts(_charts(dom.stdout), result)  # the browser parsed every chart and point

    shot = tmp_path / "shot.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1200,1400", "--hide-scrollbars",
                    html_path.resolve().as_uri(), tmp=tmp_path)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1400)
    assert len(data) > 30_000  # a blank page compresses to a few KB; charts and tables do not
    keep = os.environ.get("ONNXSPARSE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_bench_api_result_shape(tmp_path):
    result = bench([sample("digits_cnn")], threads="1,2", batches=[1, 3], runs=3, warmup=0, memory=False)
    assert [(r.threads, r.batch) for r in result.rows] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(r.latency.runs == 3 and r.latency.batch == r.batch for r in result.rows)
    path = save_report(tmp_path / "b.md", result)
    assert "| model | provider | threads | batch | status |" in path.read_text()
