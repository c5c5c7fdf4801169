"""A throwaway local PostgreSQL cluster: initdb, start on a free port, stop, delete."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shlex
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from .._core.clock import now
from .._core.errors import DatabaseError
from .._core.fixes import LOCAL_FIXES
from .processes import (
    is_postmaster_of,
    pg_ctls_of,
    pid_running,
    postmasters_of,
    resume_server,
)
from .state_folder import new_state_dir, remove_state
from .sysuser import as_root, run, spawn, write_private

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

LocalSource = Literal["embedded", "system"]

ADMIN_USER = "postgres"
ADMIN_DATABASE = "postgres"
LOCALHOST = "127.0.0.1"

_PORT_ATTEMPTS = 3
_UNSAFE = -1  # "run pg_ctl as nobody": skip it
# How often the kit looks for the end of a start or stop itself: pg_ctl -w looks only every
# 100 ms, far longer than a throwaway server takes to start or stop (figures in
# benchmarks/RESULTS.md, run 12).
_POLL_SECONDS = 0.005
# How long an interrupted run lets pg_ctl finish what it began (see _race_pg_ctl).
_INTERRUPTED_WAIT = 10.0
_PID_LINES = 8  # postmaster.pid: pid, data folder, start time, port, ..., status (since PG 10)
# Set by the kit's own fault matrix (tests/test_fault_matrix.py), which holds a start or a stop
# by freezing its pg_ctl: then the kit waits for pg_ctl alone, as before the early look, so that
# the step cannot end while pg_ctl is frozen. Not a setting: nothing else should set it.
_WAIT_FOR_PG_CTL = "ANYIO_FASTAPI_TESTKIT_WAIT_FOR_PG_CTL"


@dataclass(frozen=True)
class LocalInstall:
    """PostgreSQL binaries a local cluster runs on, checked (see ``local_install``)."""

    source: LocalSource
    bin_dir: Path
    version_num: int
    user: str | None  # the system user the server runs as; None: the current user


@dataclass
class Cluster:
    """A throwaway cluster in a private state folder."""

    source: LocalSource
    bin_dir: Path
    state_dir: Path
    socket_dir: Path
    user: str | None  # the system user it runs as; None: the current user
    password: str
    tcp: bool
    settings: dict[str, str]  # extra -c settings
    port: int = 0
    destroyed: bool = False
    _pending: _PendingStart | None = field(default=None, init=False, repr=False, compare=False)
    _launching: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    def admin_url(self) -> URL:
        # Here, not at import: pytest-xdist's controller loads this module to stop the run's
        # server, and needs no SQLAlchemy for it.
        from sqlalchemy.engine import URL

        if self.tcp:
            return URL.create(
                "postgresql", ADMIN_USER, self.password, LOCALHOST, self.port, ADMIN_DATABASE
            )
        return URL.create(
            "postgresql",
            ADMIN_USER,
            self.password,
            None,
            self.port,  # names the socket file, and keeps PGPORT out of it
            ADMIN_DATABASE,
            query={"host": str(self.socket_dir)},
        )

    def init(self, version_num: int) -> None:
        pwfile = self.state_dir / "pwfile"
        write_private(pwfile, self.password, self.user)
        try:
            result = self._tool("initdb", _initdb_args(self.data_dir, pwfile, version_num))
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise DatabaseError(
                f"initdb of {self.bin_dir} failed (exit {result.returncode}):\n"
                f"{_tail(result.stdout + result.stderr)}\n{LOCAL_FIXES}"
            )

    def start(self) -> None:
        """Start on a free port; another process may grab it first, hence the retries."""
        self.launch()
        self.await_start()

    def launch(self) -> None:
        """Launch the server on a free port and return at once; ``await_start`` waits for it.

        Until then a pg_ctl is under way: ``stop`` and ``destroy`` let it finish first (an
        interrupt between the two), so that no server starts behind them.
        """
        self.port = _free_port()
        # Until the pg_ctl is recorded: an interrupt inside the spawn loses its handle.
        self._launching = True
        self._pending = _launch_pg_ctl(
            [str(self.bin_dir / "pg_ctl"), *self._start_args()],
            self.user,
            self.state_dir,
            timeout=90,
            done=functools.partial(self._ready, time.time()),
        )
        self._launching = False

    def await_start(self) -> None:
        """Wait for the server ``launch`` launched: accepting connections, or raise
        ``DatabaseError``; on a port taken meanwhile, launch it again on another."""
        for attempt in range(_PORT_ATTEMPTS):
            if attempt:
                self.launch()
            pending = self._pending
            assert pending is not None, "await_start without launch"
            # Kept on an interrupt, even one before _await_pg_ctl's own cleanup: stop and
            # destroy then let this pg_ctl finish (a no-op once that cleanup did).
            result = _await_pg_ctl(pending)
            self._pending = None
            if result.returncode == 0:
                return
            log = _read_tail(self.log_file)
            if "already in use" not in log:
                break
        raise DatabaseError(
            f"PostgreSQL did not start (pg_ctl exit {result.returncode}). pg_ctl said: "
            f"{(result.stdout + result.stderr).strip()}\nLast lines of the server log:\n{log}\n"
            f"{LOCAL_FIXES}"
        )

    def _finish_launch(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            _abandon_start(pending)
        elif self._launching:  # interrupted while spawning pg_ctl, which may run untracked
            self._launching = False
            _wait_for_pg_ctls(self.data_dir)

    def _start_args(self) -> list[str]:
        options = [
            "-k", str(self.socket_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={LOCALHOST if self.tcp else ''}",
            # A throwaway cluster: durability buys nothing and costs time.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            *(arg for key, value in self.settings.items() for arg in ("-c", f"{key}={value}")),
        ]  # fmt: skip
        return [
            "-D", str(self.data_dir),
            "-l", str(self.log_file),
            "-w", "-t", "60",
            "-o", shlex.join(options),
            "start",
        ]  # fmt: skip

    def _ready(self, launched: float) -> bool:
        """Whether the server this start launched says it accepts connections.

        What pg_ctl -w waits for: the status line of ``postmaster.pid`` says ``ready``, written
        by a server started no earlier than 2 s before pg_ctl (a file left by a killed server
        does not count); here also on this start's port, and by the proven server of the folder.
        """
        lines = _pid_file_lines(self.data_dir)
        if len(lines) < _PID_LINES or lines[7].strip() != "ready":
            return False
        try:
            pid, started, port = int(lines[0]), int(lines[2]), int(lines[3])
        except ValueError:
            return False
        return (
            port == self.port and started >= launched - 2 and is_postmaster_of(pid, self.data_dir)
        )

    def destroy(self) -> None:
        """Stop the server and delete its state folder; idempotent."""
        self._finish_launch()
        if not self.destroyed:
            self.destroyed = True
            stop_cluster(self.state_dir, self.bin_dir, self.socket_dir, keep=False)

    def stop(self, *, wait: bool = True) -> None:
        """Stop the server and keep its data (a cached cluster); idempotent.

        ``wait=False`` (the end of a run): ask for a fast shutdown and return at once; the
        server ends on its own, and the next start in this folder waits for that end (see
        ``shutdown``). Waited for all the same when the socket folder lies outside the state
        folder, since that folder is removed after the stop.
        """
        self._finish_launch()
        if not self.destroyed:
            self.destroyed = True
            outside = self.socket_dir is not None and not self.socket_dir.is_relative_to(
                self.state_dir
            )
            if not wait and not outside and request_shutdown(self.data_dir):
                return
            stop_cluster(self.state_dir, self.bin_dir, self.socket_dir, keep=True)

    def _tool(
        self, name: str, args: Sequence[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run([str(self.bin_dir / name), *args], self.user, timeout, cwd=self.state_dir)


def new_cluster(
    source: LocalSource,
    bin_dir: Path,
    base: Path,
    user: str | None,
    tcp: bool,
    settings: dict[str, str],
    owner_pid: int | None = None,
) -> Cluster:
    """A cluster in a new state folder in ``base``, not yet initialised.

    ``owner_pid``: the pytest process it belongs to (default: this one), for ``orphans``.
    """
    state_dir, socket_dir = new_state_dir(base, bin_dir, user, owner_pid)
    # hex: safe in URLs without escaping, and free of "%" that libpq would decode.
    password = secrets.token_hex(16)
    return Cluster(source, bin_dir, state_dir, socket_dir, user, password, tcp, settings)


def _initdb_args(data_dir: Path, pwfile: Path, version_num: int) -> list[str]:
    args = [
        "-D", str(data_dir),
        "-U", ADMIN_USER,
        f"--pwfile={pwfile}",
        "--auth-local=scram-sha-256",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]  # fmt: skip
    if version_num >= 140000:
        args.append("--no-instructions")
    if version_num >= 160000:
        # The admin password is 128 random bits (secrets.token_hex(16)). PBKDF2's rounds slow
        # the guess of a weak password from its stored verifier: nothing to gain for a random
        # one, while every connection pays them, in libpq and in the server alike.
        args.append("--set=scram_iterations=1")
    if version_num >= 180000:
        args.append("--no-data-checksums")  # on by default since 18; a throwaway needs none
        # 18's default (worker) starts a pool of I/O processes with every server start, which
        # a test database's few pages never use; sync is how every earlier release reads.
        args.append("--set=io_method=sync")
    return args


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_tail(path: Path) -> str:
    try:
        return _tail(path.read_text(errors="replace"))
    except OSError as exc:
        return f"(no log: {exc})"


def stop_cluster(
    state_dir: Path, bin_dir: Path | None, socket_dir: Path | None, *, keep: bool
) -> None:
    """Stop the server of the state folder ``state_dir``; then delete the folder, or, with
    ``keep`` (a cached cluster), only a socket folder made elsewhere for this start. For a
    ``Cluster`` and for the cluster that pytest-xdist's controller knows from its record."""
    shutdown(state_dir / "data", bin_dir, modes=("fast", "immediate"))
    if not keep:
        remove_state(state_dir, socket_dir)
    elif socket_dir is not None and not socket_dir.is_relative_to(state_dir):
        remove_state(socket_dir, None)


def shutdown(data_dir: Path, bin_dir: Path | None, *, modes: Sequence[str]) -> bool:
    """Stop the postmaster of ``data_dir``: pg_ctl in each mode, then SIGKILL.

    Only a process proven to be that folder's server is stopped (see ``is_postmaster_of``):
    a ``postmaster.pid`` left by a killed server names a pid that anything may hold now (pg_ctl
    would signal it blindly), so such a file is deleted instead, which also keeps the next
    start from taking that process for a live server.

    Returns False when what ended there may not have ended cleanly: a pid file without its
    server (a crash, a kill), or a server stopped in immediate mode or killed.
    """
    pid_file = data_dir / "postmaster.pid"
    try:
        if not pid_file.exists():
            return True
    except OSError:  # an unreadable folder: no server of the kit's can run in it
        return False
    postmaster = _proven_postmaster(data_dir)
    if postmaster is None:
        for stray in postmasters_of(data_dir):  # running, with its pid file damaged
            _kill(stray)
        with contextlib.suppress(OSError):
            pid_file.unlink()
        return False
    resume_server(postmaster)  # a stopped server would wait out every pg_ctl timeout
    user = _data_owner(data_dir)
    if user != _UNSAFE and bin_dir is not None and (bin_dir / "pg_ctl").exists():

        def gone() -> bool:  # what pg_ctl -w waits for, and the process's exit
            return not pid_file.exists() and not pid_running(postmaster)

        for mode in modes:
            args = ["-D", str(data_dir), "-m", mode, "-w", "-t", "30", "stop"]
            command = [str(bin_dir / "pg_ctl"), *args]
            result = _race_pg_ctl(command, user, data_dir.parent, timeout=45, done=gone)
            if result.returncode == 0 or not pid_file.exists():
                return mode in ("smart", "fast")
    _kill_postmaster(data_dir)
    return False


def request_shutdown(data_dir: Path) -> bool:
    """Ask the server of ``data_dir`` for a fast shutdown (SIGINT, what ``pg_ctl -m fast``
    sends) and return without waiting; False when no server proven to be that folder's runs
    there, or it could not be signalled (nothing was asked)."""
    postmaster = _proven_postmaster(data_dir)
    if postmaster is None:
        return False
    resume_server(postmaster)  # a stopped server would not act on the request
    try:
        os.kill(postmaster, signal.SIGINT)
    except OSError:
        return False
    return True


@dataclass
class _PendingStart:
    """A ``pg_ctl -w`` under way (see ``Cluster.launch``): waited for by ``_await_pg_ctl``,
    or let finish by ``_abandon_start``."""

    command: list[str]
    process: subprocess.Popen[bytes] | None  # None: it could not even be spawned
    output: IO[bytes] | None  # what pg_ctl writes (stdout and stderr)
    spawn_error: str
    timeout: float
    deadline: float
    done: Callable[[], bool]

    def said(self) -> str:
        """What pg_ctl wrote; read once it ended."""
        if self.output is None or self.output.closed:
            return ""
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

    def close(self) -> None:
        if self.output is not None:
            with contextlib.suppress(OSError):
                self.output.close()


def _race_pg_ctl(
    command: list[str],
    user: str | int | None,
    cwd: Path,
    *,
    timeout: float,
    done: Callable[[], bool],
) -> subprocess.CompletedProcess[str]:
    """Run ``pg_ctl -w`` and, meanwhile, look every few ms whether ``done()`` (what it waits
    for) is true: then end pg_ctl, whose next look could be 100 ms away, and report success.

    pg_ctl keeps everything else: it signals (after its own checks) or starts the server, and
    tells a failure (the server exited, its -t timeout) in its exit status and messages. Ending
    it is harmless: it only waits, and the server it starts runs in a session of its own.
    """
    return _await_pg_ctl(_launch_pg_ctl(command, user, cwd, timeout=timeout, done=done))


def _launch_pg_ctl(
    command: list[str],
    user: str | int | None,
    cwd: Path,
    *,
    timeout: float,
    done: Callable[[], bool],
) -> _PendingStart:
    """The first half of ``_race_pg_ctl``: spawn pg_ctl (in this thread, which must also be
    the one that waits for it: see ``sysuser.spawn``)."""
    if os.environ.get(_WAIT_FOR_PG_CTL):
        done = _never
    # A file without a name: nothing to delete, also after a kill. Closed by the pending start.
    output = tempfile.TemporaryFile(prefix="testkit-pg_ctl-")  # noqa: SIM115
    try:
        process = spawn(command, user, cwd, output)
    except OSError as exc:
        output.close()
        return _PendingStart(command, None, None, str(exc), timeout, 0.0, done)
    except BaseException:
        output.close()  # pg_ctl, if it started all the same, writes to its own descriptor
        raise
    return _PendingStart(command, process, output, "", timeout, now() + timeout, done)


def _await_pg_ctl(pending: _PendingStart) -> subprocess.CompletedProcess[str]:
    """The second half of ``_race_pg_ctl``: wait for pg_ctl, or for ``done()`` first."""
    command, process, done = pending.command, pending.process, pending.done
    if process is None:
        return subprocess.CompletedProcess(command, -1, "", pending.spawn_error)
    try:
        while process.poll() is None:
            if done():
                _end(process)
                return subprocess.CompletedProcess(command, 0, "", "")
            if now() > pending.deadline:
                _end(process)
                timed_out = f"timed out after {pending.timeout} s"
                return subprocess.CompletedProcess(command, -1, "", timed_out)
            time.sleep(_POLL_SECONDS)
        return subprocess.CompletedProcess(command, process.returncode, pending.said(), "")
    finally:
        if process.returncode is None:  # interrupted (KeyboardInterrupt)
            _abandon_start(pending)
        pending.close()


def _abandon_start(pending: _PendingStart) -> None:
    """End a pg_ctl that nobody will wait for (an interrupt, a failure before the wait).

    Not killed at once: a start killed after pg_ctl forked the server and before the server
    wrote its pid file would leave a server that no stop can find. pg_ctl runs in a session of
    its own (see sysuser.spawn), out of reach of the terminal's Ctrl-C; a second Ctrl-C ends
    this wait.
    """
    try:
        if pending.process is not None and pending.process.returncode is None:
            _end(pending.process, finish_within=_INTERRUPTED_WAIT, done=pending.done)
    finally:
        pending.close()


def _wait_for_pg_ctls(data_dir: Path) -> None:
    """Let every pg_ctl of ``data_dir`` that this process started and lost track of (an
    interrupt inside ``subprocess.Popen``) finish, as ``_abandon_start`` does, and reap it."""
    deadline = now() + _INTERRUPTED_WAIT
    try:
        pids = pg_ctls_of(data_dir)
        while pids and now() < deadline:
            pids = [pid for pid in pids if not _reaped_pid(pid)]
            if pids:
                time.sleep(_POLL_SECONDS)
    finally:  # also on a second interrupt
        for pid in pg_ctls_of(data_dir):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            _reaped_pid(pid, block=True)


def _reaped_pid(pid: int, *, block: bool = False) -> bool:
    """Whether ``pid`` has ended, reaped if it is this process's child."""
    try:
        done, _status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:  # not a child of this process's (or reaped already)
        return not pid_running(pid)
    return done != 0


def _never() -> bool:
    return False


def _end(
    process: subprocess.Popen[bytes],
    *,
    finish_within: float = 0.0,
    done: Callable[[], bool] | None = None,
) -> None:
    """End pg_ctl: once it exited by itself or ``done()`` holds, within ``finish_within``
    seconds, else then, kill it; reap it.

    Reaped with ``os.waitpid``, not ``Popen.wait``: a KeyboardInterrupt that lands inside
    ``Popen.poll()`` can leave the Popen's own lock taken, and its ``wait()`` would then block
    for ever (a run that hung at Ctrl-C during a server start).
    """
    deadline = now() + finish_within
    try:
        while not _reaped(process) and now() < deadline and not (done is not None and done()):
            time.sleep(_POLL_SECONDS)
    finally:  # also on a second interrupt
        if process.returncode is None:
            with contextlib.suppress(OSError):
                process.kill()
            try:
                _, status = os.waitpid(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped already
                process.returncode = -signal.SIGKILL


def _reaped(process: subprocess.Popen[bytes]) -> bool:
    """Reap ``process`` if it exited (without blocking, without the Popen's lock)."""
    if process.returncode is not None:
        return True
    try:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:  # reaped already
        process.returncode = -signal.SIGKILL
    else:
        if pid == 0:
            return False
        process.returncode = os.waitstatus_to_exitcode(status)
    return True


def _pid_file_lines(data_dir: Path) -> list[str]:
    try:
        return (data_dir / "postmaster.pid").read_text(errors="replace").splitlines()
    except OSError:
        return []


def _proven_postmaster(data_dir: Path) -> int | None:
    """The pid in ``data_dir``'s postmaster.pid, if it is that folder's running server."""
    pid_file = data_dir / "postmaster.pid"
    try:
        written = pid_file.stat().st_mtime
        pid = int(pid_file.read_text(errors="replace").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if is_postmaster_of(pid, data_dir, written) else None


def _data_owner(data_dir: Path) -> int | None:
    """Who runs pg_ctl on ``data_dir``: None for the current user; ``_UNSAFE``: nobody.

    pg_ctl refuses root too, so root runs it as the owner of the data folder. The bin_dir
    comes from owner.json, which that owner could rewrite: never run it as root.
    """
    if not as_root():
        return None
    try:
        info = data_dir.lstat()
    except OSError:
        return _UNSAFE
    if stat.S_ISLNK(info.st_mode) or info.st_uid == 0:
        return _UNSAFE
    return info.st_uid


def _kill_postmaster(data_dir: Path) -> None:
    pid = _proven_postmaster(data_dir)
    if pid is not None:
        _kill(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    deadline = now() + 5
    while pid_running(pid) and now() < deadline:
        time.sleep(0.05)
