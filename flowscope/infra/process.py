"""Background processes Flowscope starts itself: spawn, pid files, readiness, stop, progress."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from base.errors import FlowscopeError


class Progress:
    """Prints what a long step is doing, with the time elapsed, to stderr."""

    def __init__(self, component: str, stream: TextIO | None = None) -> None:
        self.component = component
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since this step began."""
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        """Print one progress line."""
        print(f"[{self.component} {self.elapsed:6.1f}s] {message}", file=self.stream, flush=True)


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file holds about a process Flowscope started."""

    pid: int
    marker: str
    started_at: float
    endpoints: dict[str, object]

    def write(self, path: Path) -> None:
        """Write atomically, so a reader never sees half a record."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> ProcessRecord | None:
        """The record in a pid file, or None when there is none or it is unreadable."""
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), str(data["marker"]), float(data["started_at"]),
                       dict(data["endpoints"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def pid_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie (zombies of our own are reaped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The command line of a running process, or [] when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def settled_cmdline(pid: int, wait_s: float = 1.0) -> list[str]:
    """The command line of a live process. One caught in the middle of exec (just started)
    reads as empty for a moment, which would make a pid file look stale: an empty answer
    from a live process is asked again, for wait_s at most."""
    deadline = time.monotonic() + wait_s
    parts = cmdline(pid)
    while not parts and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
        parts = cmdline(pid)
    return parts


def find_processes(marker: str) -> list[int]:
    """Pids of live processes whose command line contains marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if (entry.name.isdigit() and pid_alive(int(entry.name))
                and any(marker in part for part in cmdline(int(entry.name)))):
            found.append(int(entry.name))
    return sorted(found)


def running_record(pid_file: Path) -> ProcessRecord | None:
    """The record of a live process from its pid file; a stale pid file is removed."""
    record = ProcessRecord.read(pid_file)
    if record is None:
        return None
    if pid_alive(record.pid) and any(record.marker in part
                                     for part in settled_cmdline(record.pid)):
        return record
    pid_file.unlink(missing_ok=True)
    return None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def check_ports_free(component: str, ports: dict[str, int], env_names: dict[str, str]) -> None:
    """Fail with one error naming every port that something else already holds."""
    taken = [f"{role} port {port}" for role, port in ports.items() if port_in_use(port)]
    if taken:
        hints = ", ".join(env_names[role] for role, port in ports.items() if port_in_use(port))
        raise FlowscopeError(
            component,
            f"{', '.join(taken)} on 127.0.0.1 already in use by a process that is not "
            f"Flowscope's {component}",
            hint=f"stop that process or choose other ports with {hints}",
        )


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_as(account: tuple[int, int] | None) -> dict[str, Any]:
    """subprocess keyword arguments that run a child as account (uid, gid; only root can), or
    none."""
    return {} if account is None else {"user": account[0], "group": account[1],
                                       "extra_groups": []}


def spawn(cmd: Sequence[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None,
          account: tuple[int, int] | None = None) -> subprocess.Popen[bytes]:
    """Start a detached background process whose output goes to log (as the account (uid,
    gid) when given: only root can)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, **run_as(account),
        )


def wait_until(ready: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.25,
               alive: Callable[[], bool] | None = None) -> bool:
    """Poll ready() until it is true (True), the deadline passes or alive() turns false (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return True
        if (alive is not None and not alive()) or time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def terminate(pid: int, *, timeout_s: float, sig: int = signal.SIGTERM) -> bool:
    """sig (SIGTERM), wait up to timeout_s, then SIGKILL; True when it ended on sig."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if wait_until(lambda: not pid_alive(pid), timeout_s=timeout_s, interval_s=0.1):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), timeout_s=10, interval_s=0.1)
    return False


def run_step(cmd: Sequence[str], *, component: str, what: str, log: Path, cwd: Path,
             env: dict[str, str] | None, timeout_s: float, progress: Progress,
             every_s: float = 10.0, cancel: threading.Event | None = None) -> None:
    """Run a slow command to completion, logging its output and reporting progress.

    Raises FlowscopeError naming the step, with the log's last lines, when it fails or times
    out, or (the command killed) when `cancel` is set while it runs.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    lines = [0]
    with log.open("w") as out:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def copy_output() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                lines[0] += 1

        reader = threading.Thread(target=copy_output, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        next_note = time.monotonic() + every_s
        slice_s = every_s if cancel is None else min(every_s, 0.5)
        code: int | None = None
        try:
            while code is None and time.monotonic() < deadline and not (
                    cancel is not None and cancel.is_set()):
                try:
                    code = proc.wait(timeout=min(slice_s,
                                                 max(0.01, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= next_note:
                        progress.say(f"{what}: still running, {lines[0]} lines of output so far")
                        next_note += every_s
        finally:  # timed out, cancelled or interrupted (Ctrl-C, SIGTERM): it does not outlive us
            if code is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
    if code is None and cancel is not None and cancel.is_set():
        raise FlowscopeError(component, f"{what} stopped before it ended (cancelled)", log=log)
    if code != 0:
        cause = (f"{what} timed out after {timeout_s:.0f}s" if code is None
                 else f"{what} failed (exit code {code})")
        raise FlowscopeError(component, cause, log=log, log_tail=log_tail(log))
