"""``python SCRIPT ARGS`` and ``python -m MODULE ARGS`` run as forks of a warm process.

Most of the suite's time went into fresh interpreters importing torch, Lightning, smp and
the rest (7 to 10 s of CPU each, a few hundred times). A test that runs a command the way a
user does (``tests.conftest.run_script``) now gets a fork of a *zygote*: a process forked
from the test process once its test files are imported (``pytest_collection_finish``),
before any test runs, that waits for commands and forks one child for each. The child is a
real process with its own pid, working folder, environment, output and exit status, that
starts with those libraries already imported; what it then runs is what ``python SCRIPT``
runs: the script as ``__main__`` (``runpy``), with ``sys.argv`` and ``sys.path`` as a fresh
interpreter sets them.

Why a zygote and not a fork of the test process itself: once a test has run a backward
pass, torch refuses autograd in any fork of that process, and tests leave other state
behind (signal handlers, torch switches, imported user modules).

What the child does not inherit, so that it behaves like a fresh interpreter:
- pytest's output capture, warning filters and recorder, log handlers, exit hooks, signal
  handlers, blocked signals, fault handler and open files (all as Python starts them);
- Hydra's global state and torch's process-wide switches (deterministic algorithms,
  default dtype, grad mode).

A fresh interpreter is still used where a fork would not be faithful:
- ``SEGEXP_TEST_FRESH=1`` (every command, e.g. to rule the fork out when a test fails);
- ``python -c ...`` and any other interpreter option (tests of start-up and imports);
- unless ``OMP_NUM_THREADS=1`` (``make test`` sets it): OpenMP threads do not survive a fork;
- when the test process had started CUDA before the zygote was made.
Tests that check what a command imports or how fast it starts start their own processes
and do not come through here. A test that must act on a command while it runs (kill it,
signal it) starts it with ``tests.conftest.start_script``: a fork too where this allows
(``spawn``), with ``subprocess.Popen``'s calls; the zygote runs commands side by side.

A command of another interpreter (``run_script(..., python=...)``: the ``segexp`` of a
virtual environment holding segexp's wheel) forks from a zygote of that interpreter: a
``python -c`` started on its first command, which imports the libraries every segexp command
imports (``PRELOAD``, none of segexp's or a user's own code) and then serves as this one
does. Its ``sys.path`` is that interpreter's fresh one, which its ``.pth`` files make; when
one of them comes or changes (``pip install -e`` of a user's project), the next command gets
a new zygote, as a fresh start would run the new file.
"""

from __future__ import annotations

import atexit
import builtins
import importlib.machinery
import io
import json
import logging
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

FRESH_ENV = "SEGEXP_TEST_FRESH"
REPO = Path(__file__).resolve().parents[1]

# The warning filters a (release build of) Python starts with; PYTHONWARNINGS goes in front.
_START_FILTERS = [
    ("default", None, DeprecationWarning, "__main__", 0),
    ("ignore", None, DeprecationWarning, None, 0),
    ("ignore", None, PendingDeprecationWarning, None, 0),
    ("ignore", None, ImportWarning, None, 0),
    ("ignore", None, ResourceWarning, None, 0),
]


# The zygote answers within this: it forks a child on request and reaps a killed one at once.
REPLY_S = 60.0
# A zygote of another interpreter is ready within this: it imports what a command would.
START_S = 300.0


class ZygoteGone(Exception):
    """The zygote closed its end of the pipe."""


class ZygoteFailed(RuntimeError):
    """The zygote is gone or stuck; it has been put down (see ``_give_up``)."""


class ZygoteWarning(UserWarning):
    """The suite stopped forking commands and runs the rest in fresh interpreters."""


def retire(why: str, python: str | None = None) -> None:
    """Stop forking commands (of the interpreter ``python``: default this one) for the rest of
    this test process, and say why in the warnings summary: the zygote is test machinery, so
    its failure must not fail the test it ran a command for, nor pass unseen."""
    global _zygote
    if _own(python):
        zygote, _zygote = _zygote, None
    else:
        zygote, _servers[python] = _servers.get(python), None
    if zygote is not None:
        zygote.put_down()
    message = f"{why} The commands after this one start fresh interpreters."
    warnings.warn(ZygoteWarning(message), stacklevel=3)  # at the test that ran the command


class _Zygote:
    def __init__(
        self, pid: int, requests: int, replies: int, log: str, python: str = sys.executable
    ) -> None:
        self.pid, self.requests, self.replies, self.log = pid, requests, replies, log
        self.python = python  # the interpreter its commands run as
        # Another interpreter's zygote: its process, its site-packages folders, and their
        # .pth files when it started.
        self.process: subprocess.Popen | None = None
        self.site: list[str] = []
        self.site_state: list[tuple[str, int]] = []
        self.buffer = b""
        self.count = 0
        self.answers: dict[tuple[int, str], int] = {}  # (id, "pid" or "status") -> value

    def put_down(self) -> int | None:
        """SIGKILL it, reap it and close its pipes: its exit status, or None if it was reaped
        already."""
        if self.process is None:
            code = put_down(self.pid)
        else:
            self.process.kill()
            code = self.process.wait()
        for fd in (self.requests, self.replies):
            try:
                os.close(fd)
            except OSError:
                pass
        return code

    def send(self, message: dict) -> None:
        os.write(self.requests, (json.dumps(message) + "\n").encode())

    def receive(self, deadline: float | None) -> dict | None:
        """The next reply, or None at the deadline."""
        while b"\n" not in self.buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.replies], [], [], wait)
            if not ready:
                return None
            chunk = os.read(self.replies, 65536)
            if not chunk:
                raise ZygoteGone("it exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def answer(self, ident: int, key: str, deadline: float | None) -> int | None:
        """The pid (``key="pid"``) or exit status (``"status"``) of command ``ident``, or None
        at the deadline; the replies for other commands are kept for them."""
        while (ident, key) not in self.answers:
            reply = self.receive(deadline)
            if reply is None:
                return None
            for name in ("pid", "status"):
                if name in reply:
                    self.answers[(reply["id"], name)] = reply[name]
        return self.answers.pop((ident, key))


_zygote: _Zygote | None = None
# Zygotes of other interpreters (a virtual environment's python), by path; None once retired.
_servers: dict[str, _Zygote | None] = {}


def start_zygote() -> None:
    """Fork the zygote from this process (once); call it before any test runs."""
    global _zygote
    if _zygote is None and _fork_allowed(fresh_ok=True):
        _zygote = fork_zygote()


def fork_zygote() -> _Zygote:
    """A zygote forked from this process as it is now."""
    base_path = fresh_sys_path()
    log, (requests_r, requests_w), (replies_r, replies_w) = _new_channel("zygote")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(requests_w)
            os.close(replies_r)
            _serve(requests_r, replies_w, base_path, log)
        except BaseException:  # noqa: BLE001 - to the log the test process reads
            traceback.print_exc()
        finally:
            os._exit(0)
    return _connect(pid, log, (requests_r, requests_w), (replies_r, replies_w))


def _new_channel(kind: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """A new zygote's log file (``kind`` in its name) and its two pipes, requests and
    replies, each ``(read end, write end)``."""
    log = tempfile.NamedTemporaryFile(prefix=f"forkrun-{kind}-", suffix=".log", delete=False)
    log.close()
    return log.name, os.pipe(), os.pipe()


def _connect(
    pid: int,
    log: str,
    requests: tuple[int, int],
    replies: tuple[int, int],
    python: str = sys.executable,
) -> _Zygote:
    """This process's side of a zygote just started: the zygote's pipe ends closed here, ours
    kept from the commands this process starts, the log removed at exit."""
    os.close(requests[0])
    os.close(replies[1])
    os.set_inheritable(requests[1], False)
    os.set_inheritable(replies[0], False)
    atexit.register(_remove, log)
    return _Zygote(pid, requests[1], replies[0], log, python)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fork_allowed(fresh_ok: bool = False) -> bool:
    """``fresh_ok``: made even under SEGEXP_TEST_FRESH=1, which tests/test_forkrun.py lifts."""
    fresh = os.environ.get(FRESH_ENV, "") not in ("", "0")
    if (fresh and not fresh_ok) or not hasattr(os, "fork"):
        return False
    if os.environ.get("OMP_NUM_THREADS") != "1":
        return False
    torch = sys.modules.get("torch")
    return torch is None or not torch.cuda.is_initialized()


def can_fork(
    args: Sequence[str], python: str | None = None, env: Mapping[str, str] | None = None
) -> bool:
    """True when ``python *args`` can run as a fork of a zygote (see the module doc); for
    another interpreter, when its command's environment ``env`` sets no PYTHONPATH (that
    zygote's ``sys.path`` is a fresh start's without one)."""
    if not _fork_allowed() or not args:
        return False
    if _own(python):
        if _zygote is None:
            return False
    elif _servers.get(python, True) is None or (env or {}).get("PYTHONPATH"):
        return False
    return (args[0] == "-m" and len(args) > 1) or not args[0].startswith("-")


def _own(python: str | None) -> bool:
    """Whether ``python`` is this process's interpreter (None stands for it)."""
    return python is None or python == sys.executable


def zygote_of(python: str | None) -> _Zygote:
    """The zygote that forks ``python``'s commands: this process's, or one started for that
    interpreter on first use (``start_server``)."""
    if _own(python):
        assert _zygote is not None
        return _zygote
    zygote = _servers.get(python)
    if zygote is not None and _site_state(zygote.site) != zygote.site_state:
        # A .pth file came or changed (``pip install -e`` of a user's project): a fresh start
        # would run it, which this zygote did not. A new zygote starts with it.
        zygote.put_down()
        del _servers[python]
    if python not in _servers:
        _servers[python] = None  # retired, should it fail to start
        _servers[python] = start_server(python)
    zygote = _servers[python]
    assert zygote is not None
    return zygote


# What a zygote of another interpreter imports before it forks: the libraries every segexp
# command imports at start-up, all of them outside segexp (a user package's or segexp's own
# code must run in the command, as it does in a fresh one).
PRELOAD = (
    "numpy", "PIL.Image", "yaml", "omegaconf", "hydra", "hydra.main", "torch", "torchvision",
    "torchmetrics", "pytorch_lightning", "segmentation_models_pytorch", "timm",
    "albumentations", "wandb", "wandb.apis.public",  # (a run's W&B set-up imports the last)
)  # fmt: skip


def start_server(python: str) -> _Zygote:
    """A zygote of another interpreter: ``python -c`` that imports ``PRELOAD`` and then serves
    as the test process's zygote does (``serve``), over two pipes it inherits."""
    log, (requests_r, requests_w), (replies_r, replies_w) = _new_channel("server")
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests import forkrun; "
        f"sys.path.remove({str(REPO)!r}); "
        f"forkrun.serve({requests_r}, {replies_w}, {log!r}, {list(PRELOAD)!r})"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # In "/": its working folder must outlive it (torch's import fails in a deleted one).
    with open(log, "a") as errors:
        process = subprocess.Popen(
            [python, "-c", code], cwd="/", env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=errors, pass_fds=(requests_r, replies_w),
        )  # fmt: skip
    zygote = _connect(process.pid, log, (requests_r, requests_w), (replies_r, replies_w), python)
    zygote.process = process
    # Ready once it has imported PRELOAD (a fresh command's start-up, once).
    try:
        ready = zygote.receive(time.monotonic() + START_S)
    except (OSError, ZygoteGone) as error:
        _give_up(zygote, f"it did not start: {error}")
    if ready is None:
        _give_up(zygote, f"it was not ready within {START_S:.0f} s")
    zygote.site = ready["site"]
    zygote.site_state = _site_state(zygote.site)
    return zygote


def _site_state(folders: list[str]) -> list[tuple[str, int]]:
    """The .pth files of these site-packages folders, with their times of change: what
    Python's start-up runs (a path or an import a line), which a zygote ran when it started."""
    return sorted(
        (str(path), path.stat().st_mtime_ns)
        for folder in folders
        for path in Path(folder).glob("*.pth")
    )


def serve(requests: int, replies: int, log: str, preload: Sequence[str]) -> None:
    """A zygote's life in an interpreter of its own (``start_server``)."""
    import importlib
    import site

    base_path = fresh_sys_path()
    for name in preload:
        importlib.import_module(name)
    os.write(replies, (json.dumps({"site": site.getsitepackages()}) + "\n").encode())
    _serve(requests, replies, base_path, log)


def fresh_sys_path() -> list[str]:
    """``sys.path`` of a fresh interpreter, less its first entry (the script's folder)."""
    with tempfile.TemporaryDirectory() as empty:
        out = subprocess.run(
            [sys.executable, "-c", "import sys; print('\\n'.join(sys.path[1:]))"],
            cwd=empty, capture_output=True, text=True, check=True,
        )  # fmt: skip
    return out.stdout.splitlines()


def run(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    python: str | None = None,
) -> subprocess.CompletedProcess:
    """``subprocess.run([python, *args], capture_output=True, text=True, ...)``, forked;
    ``python`` defaults to this interpreter."""
    with tempfile.TemporaryDirectory(prefix="forkrun-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        started = time.monotonic()
        forked = _start(args, cwd, env, out, err, python)
        try:
            try:
                # The pid may come late (a busy machine): the timeout counts from the request.
                forked.wait(max(0.0, started + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                forked.kill()
                try:
                    forked.wait(REPLY_S)  # the zygote reaps a killed command at once
                except subprocess.TimeoutExpired:
                    _give_up(
                        forked.zygote,
                        f"it did not report a killed command's exit within {REPLY_S:.0f} s",
                    )
                raise subprocess.TimeoutExpired(
                    forked.args, timeout, _text(out), _text(err)
                ) from None
        finally:
            if forked.returncode is None:  # interrupted while waiting
                _kill(forked.pid)
        return subprocess.CompletedProcess(forked.args, forked.returncode, _text(out), _text(err))


def spawn(args: Sequence[str], cwd: Path, env: Mapping[str, str], output: Path) -> Forked:
    """``subprocess.Popen([sys.executable, *args], stdout=f, stderr=f, ...)`` with ``f`` the
    file ``output``, forked: returns at once, with the command running."""
    with open(output, "w"):  # there on return, as Popen's caller opened it
        pass
    return _start(args, cwd, env, output, output)


class Forked:
    """A command the zygote forked, as ``subprocess.Popen`` shows a process: ``pid``, ``args``,
    ``returncode``, ``poll()``, ``wait()``, ``send_signal()``, ``terminate()``, ``kill()``."""

    def __init__(self, zygote: _Zygote, ident: int, pid: int, args: list[str]) -> None:
        self.zygote, self.ident, self.pid, self.args = zygote, ident, pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._collect(time.monotonic())

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._collect(deadline) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:  # not reaped yet: the pid is still this command's
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _collect(self, deadline: float | None) -> int | None:
        """The exit status once the zygote reported it (by ``deadline``), else None."""
        if self.returncode is None:
            try:
                self.returncode = self.zygote.answer(self.ident, "status", deadline)
            except (OSError, ZygoteGone) as error:
                _kill(self.pid)
                _give_up(self.zygote, str(error))
        return self.returncode


def _start(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    out: Path,
    err: Path,
    python: str | None = None,
) -> Forked:
    """Ask the zygote to fork ``python *args``; the command once it has a pid (the zygote forks
    at once: no pid within REPLY_S means it is stuck, and it is given up on)."""
    try:
        zygote = zygote_of(python)
    except OSError as error:  # the interpreter would not start
        raise ZygoteFailed(f"no zygote of {python} started: {error}") from error
    zygote.count += 1
    ident = zygote.count
    try:
        zygote.send(
            {"id": ident, "args": list(args), "cwd": str(cwd), "env": dict(env),
             "out": str(out), "err": str(err), "ignored": _ignored_signals()}
        )  # fmt: skip
        pid = zygote.answer(ident, "pid", time.monotonic() + REPLY_S)
    except (OSError, ZygoteGone) as error:
        _give_up(zygote, str(error))
    if pid is None:
        _give_up(zygote, f"it did not fork a command within {REPLY_S:.0f} s")
    return Forked(zygote, ident, pid, [zygote.python, *args])


def _ignored_signals() -> list[int]:
    """The signals this process ignores, which a command it starts ignores too (an ignored
    signal stays ignored across exec: a suite started in the background of a script has
    SIGINT ignored); but not those subprocess sets back to default for the new program."""
    reset = {signal.SIGPIPE, signal.SIGXFSZ}
    return sorted(
        int(number) for number in signal.valid_signals()
        if number not in reset and signal.getsignal(number) == signal.SIG_IGN
    )  # fmt: skip


def _give_up(zygote: _Zygote, why: str) -> None:
    """Put down a zygote that is gone or stuck, and raise ZygoteFailed with what the system
    knew of it (run_script then runs the command, and the later ones, fresh)."""
    global _zygote
    if _zygote is zygote:
        _zygote = None
    if _servers.get(zygote.python) is zygote:
        _servers[zygote.python] = None
    state = _process_state(zygote.pid)
    try:
        os.kill(zygote.pid, signal.SIGUSR1)  # it writes its Python stack to its log
        time.sleep(1.0)
    except ProcessLookupError:
        pass
    code = zygote.put_down()
    ended = f"; it ended with status {code}" if code is not None else ""
    log = Path(zygote.log).read_text(errors="replace").strip() if Path(zygote.log).exists() else ""
    raise ZygoteFailed(
        f"the test zygote of {zygote.python} (pid {zygote.pid}, tests/forkrun.py) failed: "
        f"{why}{ended}; {state}." + (f" What it wrote:\n{log}" if log else "")
    )


def _process_state(pid: int) -> str:
    """What /proc says of a process: its state, where it sleeps in the kernel, its stack."""
    proc = Path("/proc") / str(pid)
    facts = []
    for name in ("status", "wchan", "stack"):
        try:
            text = (proc / name).read_text(errors="replace")
        except OSError:
            continue
        if name == "status":
            text = " ".join(line for line in text.splitlines() if line.startswith("State:"))
        facts.append(f"{name}: {' | '.join(text.split(chr(10)))}".strip())
    return "; ".join(facts) or "no such process"


def put_down(pid: int) -> int | None:
    """SIGKILL a zygote and reap it: its exit status, or None if it was reaped already."""
    _kill(pid)
    try:
        _, raw = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(raw)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _serve(requests: int, replies: int, base_path: list[str], log: str) -> None:
    """The zygote: fork one child per request; report its pid, then its exit status."""
    import faulthandler

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the test process
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it reaps its children (even if the suite
    # ignores SIGCHLD, which would reap them for it); each child restores what exec would
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    # Its own errors, and its stack on SIGUSR1, go to a log the test process reads if it is stuck.
    stderr = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(stderr, 2)
    os.close(stderr)
    faulthandler.disable()
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    faulthandler.register(signal.SIGUSR1, file=2, all_threads=True)
    keep = sorted({requests, replies})
    os.closerange(3, keep[0])
    for low, high in zip(keep, keep[1:] + [65536]):
        os.closerange(low + 1, high)
    children: dict[int, int] = {}  # pid -> the request's id
    buffer, open_ = b"", True
    while open_ or children:
        # Commands run side by side: it forks each at once, and reaps each as it ends (it
        # looks for ended ones every 50 ms while any runs).
        if open_:
            ready = select.select([requests], [], [], 0.05 if children else None)[0]
        else:
            time.sleep(0.05)
            ready = []
        if ready:
            chunk = os.read(requests, 65536)
            open_ = bool(chunk)  # the test process is gone: finish the commands, then exit
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    try:
                        os.close(requests)
                        os.close(replies)
                    finally:
                        _child(request, base_path)
                children[pid] = request["id"]
                os.write(replies, (json.dumps({"id": request["id"], "pid": pid}) + "\n").encode())
        while children:
            pid, raw = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            ident = children.pop(pid, None)
            if ident is not None:
                code = os.waitstatus_to_exitcode(raw)
                os.write(replies, (json.dumps({"id": ident, "status": code}) + "\n").encode())


def _text(path: Path) -> str:
    """What ``text=True`` gives: the locale's encoding, universal newlines."""
    import locale

    data = path.read_bytes() if path.exists() else b""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _child(request: dict, base_path: list[str]) -> None:
    code = 1
    try:
        cwd = Path(request["cwd"])
        _become_fresh(cwd, request)
        code = _run_main(request["args"], cwd, base_path)
        _exit_like_python()
    except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _become_fresh(cwd: Path, request: dict) -> None:
    import faulthandler

    env, ignored = request["env"], set(request["ignored"])

    faulthandler.disable()
    faulthandler.unregister(signal.SIGUSR1)  # the zygote's (_serve)
    # Signals: what exec leaves (those the test process ignores stay ignored, the rest back to
    # default), then Python's start-up handlers; nothing blocked.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(number, signal.SIG_IGN if number in ignored else signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    if signal.SIGINT not in ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    # Exit hooks: none of the test process's (pytest's, xdist's); the standard library's own.
    atexit._clear()
    atexit.register(logging.shutdown)
    if "multiprocessing.util" in sys.modules:
        import multiprocessing.process
        import multiprocessing.util

        # As multiprocessing starts a forked child: none of the parent's children or
        # finalizers (one removes its temporary folder), its after-fork hooks run.
        multiprocessing.process._children.clear()
        multiprocessing.util._finalizer_registry.clear()
        multiprocessing.util._run_after_forkers()
        atexit.register(multiprocessing.util._exit_function)
    import weakref

    # The zygote's finalizers belong to the test process: one of them deletes wandb's
    # staging folder for media (a TemporaryDirectory made at import), which the test
    # process still uses. The command's own finalizers run at its exit as usual.
    for finalizer in list(weakref.finalize._registry):
        finalizer.detach()
    if weakref.finalize._registered_with_atexit:
        atexit.register(weakref.finalize._exitfunc)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if request["err"] == request["out"]:  # one file, one offset, as Popen(stdout=f, stderr=f)
        err = os.dup(out)
    else:
        err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # Standard streams: stdin empty, stdout and stderr to the files the parent reads.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=unbuffered
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True,
        write_through=True,
    )  # fmt: skip
    # Warnings and logging as Python starts them.
    warnings.filters[:] = _START_FILTERS
    warnings.showwarning = warnings._showwarning_orig
    warnings._showwarnmsg_impl = _print_warning  # pytest's recorder otherwise
    warnings._filters_mutated()
    if env.get("PYTHONWARNINGS"):
        warnings._processoptions(env["PYTHONWARNINGS"].split(","))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.disable(logging.NOTSET)
    # Folder and environment.
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # Library state a fresh process would not have: the temporary folder as TMPDIR names it
    # (tempfile caches the first it found), numpy's global generator seeded afresh (random's
    # reseeds itself in a fork; numpy's would repeat the zygote's numbers in every command).
    tempfile.tempdir = None
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "hydra.core.global_hydra" in sys.modules:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    if "torch" in sys.modules:
        import torch

        # Only if it is on: turning it off imports torch._inductor (and sympy) when it is not
        # imported yet, as no fresh interpreter would.
        if torch.are_deterministic_algorithms_enabled():
            torch.use_deterministic_algorithms(False)
        torch.set_default_dtype(torch.float32)
        torch.set_grad_enabled(True)


def _print_warning(message: warnings.WarningMessage) -> None:
    """Python's own way to show a warning (``warnings._showwarnmsg_impl``)."""
    file = message.file if message.file is not None else sys.stderr
    if file is None:
        return
    try:
        file.write(warnings._formatwarnmsg(message))
    except OSError:
        pass


def _run_main(args: list[str], cwd: Path, base_path: list[str]) -> int:
    """Run the script or module as ``__main__``; the exit status Python would give."""
    sys.orig_argv = [sys.executable, *args]
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]  # runpy puts the module's file in argv[0]
            sys.path[:] = [str(cwd.resolve()), *base_path]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            # As Python runs a script: argv[0] as given, __file__ absolute, no __spec__.
            script = (cwd / args[0]).resolve()
            sys.argv = list(args)
            sys.path[:] = [str(script.parent), *base_path]
            main = types.ModuleType("__main__")
            main.__file__ = str(script)
            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", str(script))
            main.__builtins__ = builtins
            sys.modules["__main__"] = main
            with io.open_code(str(script)) as source:
                code = compile(source.read(), str(script), "exec")
            exec(code, main.__dict__)
    except SystemExit as exit_:
        if exit_.code is None:
            return 0
        if isinstance(exit_.code, int):
            return exit_.code
        print(exit_.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _print_uncaught()
        _exit_like_python()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # Python dies of the signal, as here
        return 130
    except BaseException:  # noqa: BLE001 - printed as Python prints an uncaught exception
        _print_uncaught()
        return 1
    return 0


def _print_uncaught() -> None:
    """The traceback Python prints, from the script's frame on (this module's left out)."""
    kind, error, trace = sys.exc_info()
    trace = trace.tb_next if trace is not None else None
    sys.excepthook(kind, error.with_traceback(trace), trace)


def _exit_like_python() -> None:
    """What the interpreter does at exit before it finalizes: join the threads that are not
    daemons, run the exit hooks, flush the streams."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
