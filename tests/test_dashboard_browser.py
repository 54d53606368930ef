"""The visual layer in a real browser: Debian's headless chromium, driven by selenium through
/usr/bin/chromedriver (no browser download). Needs ``apt-get install -y chromium chromium-driver``
and ``pip install selenium``; skipped with the reason when either is missing.

    python -m pytest -m e2e tests/test_dashboard_browser.py
    HPO_SCREENSHOTS=docs/img python -m pytest -m e2e tests/test_dashboard_browser.py  # README images
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

from dashboards.notes import NoteWriter
from dashboards.report import build_report
from hpo.searcher import Event
from tests.synthetic import make_study

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# README screenshots go here when set (resolved now: some tests change the working directory)
SHOTS = Path(os.environ["HPO_SCREENSHOTS"]).resolve() if os.environ.get("HPO_SCREENSHOTS") else None
FIGURES = ("fig-history", "fig-curves", "fig-parallel", "fig-importance", "fig-slices-learning_rate")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Headless chromium with a fresh profile, collecting the console log."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1400,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''")


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in the test's temp dir (and under $HPO_SCREENSHOTS, for the README)."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / name)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def finished_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, optuna.Study]:
    """A finished study (COMPLETE, PRUNED and FAIL trials) with the notes ``hpo run`` writes."""
    monkeypatch.chdir(tmp_path)  # checkpoints at runs/demo/... as `hpo run` lays them out
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = make_study(url, 24, name="demo", ckpt_root=Path("runs/demo/trials"))
    notes = NoteWriter(study, lambda e: None)
    for t in study.trials:
        notes(Event(t.state.name.lower(), t.number, t.params))
    return url, study


@pytest.fixture
def dashboard(finished_study, tmp_path: Path) -> Iterator[str]:
    """``hpo dashboard`` serving the finished study on a free loopback port."""
    url, _ = finished_study
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "dashboard", "--storage", url, "--port", str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        _wait(up, "hpo dashboard to listen", timeout=60)
        yield f"http://127.0.0.1:{port}/dashboard"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_dashboard_lists_the_study_trials_pruned_states_and_notes(
    browser, dashboard, finished_study, tmp_path
):
    _, study = finished_study
    browser.get(dashboard)
    _wait(lambda: "demo" in _text(browser), "the study list to show the study")

    browser.get(f"{dashboard}/studies/1/trials")
    _wait(lambda: "24 Trials" in _text(browser), "the trial list")
    text = _text(browser)
    assert "Trial 0" in text and "Trial 1" in text
    assert "Pruned" in text and "Complete" in text  # ASHA-stopped trials are PRUNED, not COMPLETE

    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    browser.get(f"{dashboard}/studies/1/trials?numbers={pruned.number}")
    _wait(lambda: f"Trial {pruned.number} · PRUNED" in _text(browser), "a pruned trial's note")
    assert "stopped by ASHA" in _text(browser)

    best = study.best_trial
    browser.get(f"{dashboard}/studies/1/trials?numbers={best.number}")
    command = f"hpo export --study demo --trial {best.number} --out exports/demo-trial-{best.number}"
    _wait(lambda: command in _text(browser), "the best trial's note with its export command")
    assert "checkpoint: kept" in _text(browser)
    time.sleep(1)  # let the layout settle for the picture
    _screenshot(browser, tmp_path, "dashboard.png")


def test_dashboard_shows_new_trials_live(browser, dashboard, finished_study):
    _, study = finished_study
    browser.get(f"{dashboard}/studies/1/trials")
    _wait(lambda: "24 Trials" in _text(browser), "the trial list")
    trial = study.ask()  # a trial starting while the page is open
    trial.report(3.1, 1)
    _wait(lambda: "25 Trials" in _text(browser), "the new trial to appear without a reload", timeout=60)


def test_report_renders_every_figure_without_console_errors(browser, tmp_path: Path) -> None:
    study = make_study(None, 80, name="demo", ckpt_root=tmp_path / "runs")
    report = build_report(study, tmp_path / "report.html")
    browser.get_log("browser")  # drop what earlier pages logged
    browser.set_window_size(1280, 1500)
    browser.get(report.as_uri())
    js = "return Array.from(document.querySelectorAll('div.js-plotly-plot')).map(d => d.id)"
    _wait(lambda: set(FIGURES) <= set(browser.execute_script(js)), "plotly to render every figure")
    for div in browser.execute_script(js):  # each figure drew its SVG
        drawn = f"return document.getElementById('{div}').querySelectorAll('svg.main-svg').length"
        assert browser.execute_script(drawn) > 0, div
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    # the trials table sorts by value on a click, blanks (PRUNED, FAIL) last
    browser.find_element("xpath", "//table[@id='trials']//th[text()='value']").click()
    first = browser.execute_script("return document.querySelector('#trials tbody tr').cells[2].innerText")
    assert float(first) == pytest.approx(study.best_value, abs=1e-4)
    browser.execute_script("window.scrollTo(0, 0)")
    _screenshot(browser, tmp_path, "report.png")
    browser.set_window_size(1400, 900)
