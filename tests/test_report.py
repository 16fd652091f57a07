"""`vico report`: one self-contained HTML file, rendered in headless Chromium.

The browser comes from Debian's `chromium` package (scripts/install-chromium.sh,
run here when it is missing); the test skips, saying why, only when it cannot be installed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from PIL import Image, ImageStat

from tests.conftest import run_vico
from tests.test_versions_support import demo_version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]
CONSOLE_ERROR = re.compile(r"Uncaught|CONSOLE\(\d+\).*(error|Error)|:ERROR:CONSOLE|Failed to load resource|net::ERR_")


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        done = subprocess.run(["sh", os.path.join(REPO, "scripts", "install-chromium.sh")],
                              capture_output=True, text=True, timeout=900)
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip(f"chromium cannot be installed here: {(done.stderr or done.stdout).strip()[-300:]}")
    return exe


def render(chromium: str, page: str, shot: str, profile: str) -> str:
    """Screenshot `page`; returns Chromium's log (console messages included)."""
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                           "--window-size=1280,2000", f"file://{page}"],
                          capture_output=True, text=True, timeout=120)
    assert os.path.exists(shot), done.stderr[-2000:]
    return done.stderr


def test_console_errors_are_seen(chromium, tmp_path):
    """The check below can fail: a page with a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>console.error('boom'); undefinedThing();</script></body></html>")
    log = render(chromium, str(page), str(tmp_path / "bad.png"), str(tmp_path / "profile"))
    assert CONSOLE_ERROR.search(log), log[-2000:]


def test_report_renders(chromium, tmp_path_factory, tmp_path):
    version = demo_version(tmp_path_factory)
    out = str(tmp_path / "report.html")
    done = run_vico("report", version, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == out
    html = open(out).read()
    # one file: images inline, nothing fetched from anywhere
    assert html.count("data:image/jpeg;base64,") >= 6 and html.count("<svg") >= 6
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)
    for words in ("Video durations", "Clips per video", "Questions by task", "Answer letters", "Failure reasons",
                  "clue timeline", "✓"):
        assert words in html
    log = render(chromium, out, str(tmp_path / "shot.png"), str(tmp_path / "profile"))
    assert not CONSOLE_ERROR.search(log), CONSOLE_ERROR.search(log).group(0)
    image = Image.open(tmp_path / "shot.png").convert("L")
    assert image.size == (1280, 2000)
    assert max(ImageStat.Stat(image).var) > 200  # not a blank page
    top = image.crop((0, 0, 1280, 60))
    assert ImageStat.Stat(top).mean[0] < 100  # the dark header was drawn


def test_report_default_path_is_outside_the_version(tmp_path_factory, tmp_path, monkeypatch):
    version = demo_version(tmp_path_factory)
    from vico_pipeline.report import write_report
    from vico_pipeline.versions import list_versions

    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(os.path.dirname(version)))
    path = write_report(version)
    fingerprint = json.load(open(os.path.join(version, "manifest.json")))["fingerprint"]
    assert path == str(tmp_path / f"demo-v1-{fingerprint[:8]}-report.html") and os.path.getsize(path) > 10000
    assert sorted(os.listdir(os.path.dirname(version))) == before  # nothing beside the versions
    assert "report.html" not in os.listdir(version)  # nor inside one: versions are immutable
    listed = [v["version"] for v in list_versions(os.path.dirname(version))]
    assert "v1" in listed and not any(name.endswith(".html") for name in listed)  # other tests may add versions
    # The frame strip wraps onto more rows instead of running off the right edge.
    text = open(path).read()
    strip = text[text.index(".strip{"):].split("}", 1)[0]
    assert "flex-wrap:wrap" in strip and "overflow-x" not in strip
