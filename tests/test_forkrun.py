"""The forked runner (tests/forkrun.py) behaves as a fresh ``python SCRIPT``: each check runs the
same command both ways and compares what a test could see."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests import forkrun
from tests.conftest import (
    REPO,
    TINY,
    new_venv,
    run_script,
    site_packages,
    start_script,
    stop_started,
)

# Made at import, so before the zygote: a test process's temporary folder (as wandb makes
# one for media when it is imported), which no command may delete when it exits.
KEPT = tempfile.TemporaryDirectory(prefix="forkrun-kept-")

PROBE = textwrap.dedent(
    """
    import atexit, json, logging, os, signal, sys, warnings
    import probe_helper  # from the script's folder, like a user's own module
    warnings.warn("a user warning")
    atexit.register(lambda: print("atexit ran", flush=True))
    handlers = {
        name: str(signal.getsignal(getattr(signal, name)))
        for name in ("SIGINT", "SIGTERM", "SIGPIPE", "SIGUSR1", "SIGALRM", "SIGCHLD")
    }
    print(json.dumps({
        "argv": sys.argv,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "env": os.environ.get("PROBE_VALUE"),
        "helper": probe_helper.VALUE,
        "main": __name__,
        "signals": handlers,
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "filters": [(f[0], f[2].__name__, f[3] and str(f[3])) for f in warnings.filters],
        "root_handlers": len(logging.getLogger().handlers),
    }))
    code = sys.argv[1]
    if code == "raise":
        raise ValueError("uncaught")
    if code == "text":
        sys.exit("a message")
    if code == "interrupt":
        raise KeyboardInterrupt
    sys.exit(int(code))
    """
)


@pytest.fixture(autouse=True)
def zygote() -> None:
    """The zygote is made after collection when OMP_NUM_THREADS=1 (make test sets it)."""
    if forkrun._zygote is None:
        pytest.skip("no test zygote: run with OMP_NUM_THREADS=1, as make test does")


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "probe.py").write_text(PROBE)
    (folder / "probe_helper.py").write_text("VALUE = 'first'\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PROBE_VALUE", "from the environment")
    monkeypatch.delenv(forkrun.FRESH_ENV, raising=False)  # the suite may run with it set
    return folder


def both(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(forkrun.FRESH_ENV, raising=False)  # the suite may run with it set
    assert forkrun.can_fork(args)
    forked = run_script(*args, cwd=cwd)
    with monkeypatch.context() as fresh_only:
        fresh_only.setenv(forkrun.FRESH_ENV, "1")
        fresh = run_script(*args, cwd=cwd)
    return forked, fresh


@pytest.mark.parametrize("code", ["0", "3", "raise", "text", "interrupt"])
def test_a_probe_sees_what_a_fresh_interpreter_shows_it(code, probe, monkeypatch):
    forked, fresh = both("probe.py", code, cwd=probe, monkeypatch=monkeypatch)
    expected = {"raise": 1, "text": 1, "interrupt": -signal.SIGINT}.get(code) or int(code)
    assert (forked.returncode, fresh.returncode) == (expected, expected), (forked, fresh)
    assert forked.stdout == fresh.stdout
    assert forked.stderr == fresh.stderr
    seen = json.loads(forked.stdout.splitlines()[0])
    assert seen["path0"] == str(probe.resolve()) and seen["env"] == "from the environment"
    assert seen["main"] == "__main__" and seen["argv"] == ["probe.py", code]
    assert "atexit ran" in forked.stdout and "a user warning" in forked.stderr


def test_a_signal_the_test_process_ignores_stays_ignored(probe, monkeypatch):
    """As across exec: a suite started in the background of a script (``make test &``) has
    SIGINT ignored, and so has every command it starts."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forked, fresh = both("probe.py", "0", cwd=probe, monkeypatch=monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert forked.stdout == fresh.stdout
    assert json.loads(forked.stdout.splitlines()[0])["signals"]["SIGINT"] == "1"  # SIG_IGN


def test_a_command_leaves_the_test_processs_temporary_folders(probe, monkeypatch):
    forked = run_script("probe.py", "0", cwd=probe)
    assert forked.returncode == 0, forked.stderr
    assert Path(KEPT.name).is_dir()


def test_a_hung_command_times_out_and_is_killed(probe, monkeypatch):
    (probe / "hang.py").write_text(
        "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        run_script("hang.py", cwd=probe, timeout=2)
    pid = int(expired.value.output.split()[0])
    assert pid != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


SLOW = textwrap.dedent(
    """
    import signal, sys, time
    print("out", flush=True)
    print("err", file=sys.stderr, flush=True)
    print("out again", flush=True)
    if sys.argv[1] == "handle":  # as segexp's runs do: stop cleanly on SIGTERM
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    time.sleep(600)
    """
)


def await_slow_output(*logs: Path) -> None:
    """Until each log holds SLOW's three lines (its handler is set by then), 60 s at most."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(log.read_text().count("\n") == 3 for log in logs):
        time.sleep(0.05)


@pytest.mark.parametrize(("how", "expected"), [("kill", -9), ("terminate", 7)])
def test_a_started_command_is_a_popen_either_way(how, expected, probe, monkeypatch):
    """start_script: poll while it runs, then the signal's exit status and one output file in
    the order written, as subprocess.Popen gives; meanwhile other commands run beside it."""
    (probe / "slow.py").write_text(SLOW)
    handling = "handle" if how == "terminate" else "ignore"
    seen = {}
    for mode in ("fork", "fresh"):
        if mode == "fresh":
            monkeypatch.setenv(forkrun.FRESH_ENV, "1")
        log = probe / f"{mode}.log"
        process = start_script("slow.py", handling, output=log, cwd=probe)
        assert isinstance(process, forkrun.Forked) == (mode == "fork")
        try:
            await_slow_output(log)
            assert process.poll() is None and process.returncode is None
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)
            beside = run_script("probe.py", "3", cwd=probe)  # another command meanwhile
            assert beside.returncode == 3 and "atexit ran" in beside.stdout
            getattr(process, how)()
            seen[mode] = (process.wait(timeout=60), process.poll(), log.read_text())
        finally:
            stop_started(process)
    assert seen["fork"] == seen["fresh"] == (expected, expected, "out\nerr\nout again\n")


def test_commands_run_side_by_side_and_each_gets_its_own_status(probe):
    """The zygote forks a command while others run, and reports each one's exit as it ends,
    in whatever order they end."""
    (probe / "slow.py").write_text(SLOW)
    first = start_script("slow.py", "handle", output=probe / "first.log", cwd=probe)
    second = start_script("slow.py", "ignore", output=probe / "second.log", cwd=probe)
    try:
        assert isinstance(first, forkrun.Forked) and isinstance(second, forkrun.Forked)
        await_slow_output(probe / "first.log", probe / "second.log")
        second.kill()
        assert second.wait(timeout=60) == -9 and first.poll() is None
        assert run_script("probe.py", "5", cwd=probe).returncode == 5
        first.terminate()
        assert first.wait(timeout=60) == 7
    finally:
        stop_started(first, second)


def test_interpreter_options_get_a_fresh_interpreter(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(forkrun.FRESH_ENV, raising=False)
    assert not forkrun.can_fork(("-c", "pass"))
    assert forkrun.can_fork(("-m", "segexp.export"))
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # a parent's OpenMP threads do not survive a fork
    assert not forkrun.can_fork(("train.py",))


@pytest.mark.slow
def test_a_tiny_training_gives_the_same_metrics_either_way(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(forkrun.FRESH_ENV, raising=False)
    metrics = {}
    for mode in ("fork", "fresh"):
        if mode == "fresh":
            monkeypatch.setenv(forkrun.FRESH_ENV, "1")
        run = tmp_path / mode
        result = run_script(
            "train.py", *TINY, f"paths.data_dir={data_dir}", f"hydra.run.dir={run}", cwd=REPO
        )
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[mode] = json.loads((run / "metrics.json").read_text())
    assert metrics["fork"] == metrics["fresh"]
    assert "test/mIoU" in metrics["fork"]


@pytest.fixture
def spare_zygote(monkeypatch: pytest.MonkeyPatch):
    """A second zygote in the suite's place, for tests that break it; the suite's is put back."""
    spare = forkrun.fork_zygote()
    monkeypatch.setattr(forkrun, "_zygote", spare)
    monkeypatch.setattr(forkrun, "REPLY_S", 3.0)
    yield spare
    forkrun.put_down(spare.pid)


def test_a_stuck_zygote_is_put_down_and_the_command_runs_fresh(spare_zygote, probe):
    """A zygote that stops answering (here: stopped) is given up on within REPLY_S instead of
    the test waiting forever: the warnings summary says what /proc knew of it, the command
    runs in a fresh interpreter, and so do the ones after it."""
    os.kill(spare_zygote.pid, signal.SIGSTOP)
    with pytest.warns(forkrun.ZygoteWarning, match=r"did not fork a command within 3 s.*T \(stop"):
        result = run_script("probe.py", "0", cwd=probe, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["helper"] == "first"
    assert forkrun._zygote is None
    with pytest.raises(ProcessLookupError):
        os.kill(spare_zygote.pid, 0)  # put down and reaped
    assert not forkrun.can_fork(("probe.py", "0"))


def test_a_dead_zygote_names_how_it_died(spare_zygote, probe):
    os.kill(spare_zygote.pid, signal.SIGKILL)
    stat = Path(f"/proc/{spare_zygote.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # dead, its pipes closed
        time.sleep(0.01)
    with pytest.raises(forkrun.ZygoteFailed, match=r"Broken pipe; it ended with status -9"):
        forkrun.run(["probe.py", "0"], cwd=probe, env=dict(os.environ), timeout=300)
    assert forkrun._zygote is None


def test_a_zygote_given_up_on_shows_its_python_stack(spare_zygote):
    """Where a live zygote waits (faulthandler writes its stack to its log on SIGUSR1): here in
    _serve, reading the next request."""
    with pytest.raises(
        forkrun.ZygoteFailed, match=r"(?s)a test's reason.*What it wrote:.*in _serve"
    ):
        forkrun._give_up(spare_zygote, "a test's reason")
    assert forkrun._zygote is None


def test_a_command_that_hangs_only_as_a_fork_gets_the_fresh_result(spare_zygote, probe):
    """Were a fork to hang where a fresh interpreter does not (a lock the zygote copied while
    held, say), that is the machinery's fault: the fresh run's result stands, with a warning."""
    (probe / "fork_hangs.py").write_text(
        "import sys, time\n"
        "if 'tests.forkrun' in sys.modules:  # a fork of the zygote (of the test process)\n"
        "    time.sleep(600)\n"
        "print('finished')\n"
    )
    with pytest.warns(forkrun.ZygoteWarning, match=r"fork_hangs.py .*ran past 5 s as a fork"):
        result = run_script("fork_hangs.py", cwd=probe, timeout=5)
    assert (result.returncode, result.stdout) == (0, "finished\n")
    assert forkrun._zygote is None


def test_a_timeout_shorter_than_a_slow_fork_is_the_commands_not_the_zygotes(spare_zygote, probe):
    """A zygote slow to fork (here: stopped for 1 s) is waited for up to REPLY_S even when the
    command's own timeout is shorter; the command then times out as usual, zygote kept."""
    (probe / "hang.py").write_text("import time\ntime.sleep(600)\n")
    os.kill(spare_zygote.pid, signal.SIGSTOP)
    resume = threading.Timer(1.0, os.kill, (spare_zygote.pid, signal.SIGCONT))
    resume.start()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            forkrun.run(["hang.py"], cwd=probe, env=dict(os.environ), timeout=0.5)
    finally:
        resume.join()
    assert forkrun._zygote is spare_zygote
    again = forkrun.run(["probe.py", "0"], cwd=probe, env=dict(os.environ), timeout=300)
    assert again.returncode == 0, again.stderr


# What a command of another interpreter sees of it; its parent's pid tells a fork from a fresh
# start, and is left out of the comparison.
VENV_PROBE = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    late = importlib.util.find_spec("late_package")
    print(json.dumps({
        "ppid": os.getppid(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "path": sys.path,
        "argv": sys.argv,
        "late": late and late.origin,
        "late_line": getattr(sys, "late_pth_line_ran", None),
        # Where the zygote imported torch but not its compiler, a fork must not import it
        # either (turning deterministic algorithms off does, where it is not imported yet).
        "inductor": "torch._inductor" in sys.modules,
    }))
    """
)


@pytest.fixture
def venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A virtual environment's python, and a folder with VENV_PROBE; the zygotes of other
    interpreters that the test starts are put down after it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(forkrun.FRESH_ENV, raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(forkrun, "_servers", {})
    monkeypatch.setattr(forkrun, "PRELOAD", ("torch",))  # a heavy import, and no compiler
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "venv_probe.py").write_text(VENV_PROBE)
    yield new_venv(tmp_path / "venv")
    for server in forkrun._servers.values():
        if server is not None:
            server.put_down()


def probe_venv(python: Path, tmp_path: Path, fresh: bool = False) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        if fresh:
            patch.setenv(forkrun.FRESH_ENV, "1")
        result = run_script("venv_probe.py", "x", cwd=tmp_path / "probe", python=python)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_another_interpreters_command_runs_as_a_fork_that_sees_what_a_fresh_one_does(
    venv, tmp_path
):
    """``run_script(..., python=<a virtual environment's>)`` forks from a zygote of that
    interpreter: same executable, prefix, sys.path and argv as ``<venv>/bin/python SCRIPT``."""
    forked = probe_venv(venv, tmp_path)
    fresh = probe_venv(venv, tmp_path, fresh=True)
    server = forkrun._servers[str(venv)]
    assert server is not None and forked["ppid"] == server.pid  # a fork of that zygote
    assert fresh["ppid"] == os.getpid()
    forked.pop("ppid"), fresh.pop("ppid")
    assert forked == fresh
    assert fresh["prefix"] == str(venv.parent.parent) and fresh["executable"] == str(venv)
    assert fresh["path"][0] == str((tmp_path / "probe").resolve())


def test_a_pth_file_installed_after_the_zygote_started_is_run_as_a_fresh_start_runs_it(
    venv, tmp_path
):
    """``pip install -e`` writes a .pth file, which Python runs at start-up: a zygote started
    before it would not know the package. The command after it gets a new zygote."""
    first = probe_venv(venv, tmp_path)
    assert first["late"] is None
    late = tmp_path / "late"
    (late / "late_package").mkdir(parents=True)
    (late / "late_package" / "__init__.py").write_text("")
    (site_packages(venv) / "late.pth").write_text(
        f"{late}\nimport sys; sys.late_pth_line_ran = 'yes'\n"
    )
    forked = probe_venv(venv, tmp_path)
    fresh = probe_venv(venv, tmp_path, fresh=True)
    assert forked["ppid"] != first["ppid"] and forked["ppid"] == forkrun._servers[str(venv)].pid
    forked.pop("ppid"), fresh.pop("ppid")
    assert forked == fresh
    assert fresh["late"] == str(late / "late_package" / "__init__.py")
    assert fresh["late_line"] == "yes"  # its import line ran too (as an editable finder's)
    with pytest.raises(ProcessLookupError):
        os.kill(first["ppid"], 0)  # the old zygote was put down and reaped


def test_an_interpreter_whose_zygote_fails_to_start_runs_its_commands_fresh(venv, tmp_path):
    """A zygote that dies before it is ready (as torch's import did in a deleted working
    folder) is the machinery's fault: the command runs fresh, a warning quotes what it wrote,
    and that interpreter's later commands run fresh without trying again."""
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$2" in *forkrun.serve*) echo "this python serves nothing" >&2; exit 4;; esac\n'
        f'exec {venv} "$@"\n'
    )
    wrapper.chmod(0o755)
    with pytest.warns(
        forkrun.ZygoteWarning, match=r"(?s)did not start.*this python serves nothing"
    ):
        result = run_script("venv_probe.py", "x", cwd=tmp_path / "probe", python=wrapper)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ppid"] == os.getpid()  # fresh
    assert forkrun._servers[str(wrapper)] is None
    assert not forkrun.can_fork(("venv_probe.py",), str(wrapper))
