"""optuna-dashboard on a sweep's journal file, looked at in a real headless browser (chromium).

Skipped, with the reason, when chromium or optuna-dashboard is missing (.ci/run installs
chromium where it can).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(not DASHBOARD.exists(), reason="no optuna-dashboard next to Python"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finished_study(path: Path) -> int:
    """A study like a sweep leaves: completed, pruned and failed trials; returns its id."""
    import optuna
    from optuna.trial import TrialState

    from segexp.track.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="dashboard-test", storage=open_storage(str(path)), direction="maximize"
    )
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for number, state in enumerate(
        [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.FAIL]
    ):
        trial = study.ask(space)
        for epoch in (1, 2):
            trial.report(0.1 * number + 0.01 * epoch, epoch)
        study.tell(trial, 0.1 * number if state == TrialState.COMPLETE else None, state=state)
    return study._study_id


def chromium(*args: str, profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--virtual-time-budget=15000",  # let the page's scripts fetch and draw the study
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_dashboard_lists_the_trials_of_a_journal_study(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    study_id = finished_study(journal)
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    server = subprocess.Popen(
        [str(DASHBOARD), str(journal), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as response:
                    assert "dashboard-test" in response.read().decode()
                    break
            except OSError:
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.5)
        page = f"{base}/dashboard/studies/{study_id}/trials"
        shot = tmp_path / "dashboard.png"
        result = chromium(f"--screenshot={shot}", page, profile=tmp_path / "profile")
        assert shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]
        dom = chromium("--dump-dom", page, profile=tmp_path / "profile").stdout
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert "dashboard-test" in dom, dom[-2000:]
    for number in range(5):  # every trial is listed
        assert f"Trial {number}" in dom, dom[-3000:]
    for state in ("Complete", "Pruned", "Fail"):
        assert state in dom, dom[-3000:]
