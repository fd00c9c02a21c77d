import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from base.errors import FlowscopeError
from flowscope.infra import process


def test_process_record_round_trips_and_stale_records_are_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    process.ProcessRecord(999_999_99, "marker", 1.0, {"bootstrap": "h:1"}).write(pid_file)
    assert process.ProcessRecord.read(pid_file) == process.ProcessRecord(
        999_999_99, "marker", 1.0, {"bootstrap": "h:1"})
    assert process.running_record(pid_file) is None
    assert not pid_file.exists()


def test_unreadable_pid_file_reads_as_none(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("{not json")
    assert process.ProcessRecord.read(pid_file) is None


def test_running_record_requires_the_marker_in_the_command_line(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "mark-1"])
    try:
        pid_file = tmp_path / "x.pid"
        process.ProcessRecord(child.pid, "mark-1", time.time(), {}).write(pid_file)
        assert process.running_record(pid_file) is not None
        process.ProcessRecord(child.pid, "other-mark", time.time(), {}).write(pid_file)
        assert process.running_record(pid_file) is None
    finally:
        child.kill()
        child.wait()


def test_terminate_ends_a_process_and_reaps_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    assert process.pid_alive(child.pid)
    assert process.terminate(child.pid, timeout_s=10) is True
    assert not process.pid_alive(child.pid)


def test_terminate_kills_a_process_that_ignores_sigterm() -> None:
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    assert process.terminate(child.pid, timeout_s=0.5) is False
    assert not process.pid_alive(child.pid)


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert process.port_in_use(sock.getsockname()[1])


def test_wait_until_gives_up_at_its_deadline() -> None:
    started = time.monotonic()
    assert process.wait_until(lambda: False, timeout_s=0.3, interval_s=0.05) is False
    assert time.monotonic() - started < 2


def test_wait_until_stops_when_the_process_died() -> None:
    assert process.wait_until(lambda: False, timeout_s=30, alive=lambda: False) is False


def test_log_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert process.log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert process.log_tail(tmp_path / "missing.log") == ""


def test_run_step_failure_names_component_and_shows_log(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    with pytest.raises(FlowscopeError) as caught:
        process.run_step(["sh", "-c", "echo resolving; echo 'artifact not found' ; exit 3"],
                         component="kafka", what="Maven resolution", log=log, cwd=tmp_path,
                         env=None, timeout_s=30, progress=process.Progress("kafka"))
    error = caught.value
    assert error.component == "kafka"
    assert error.cause == "Maven resolution failed (exit code 3)"
    assert error.log == log
    assert "artifact not found" in (error.log_tail or "")
    assert "log: " in error.render()


def test_run_step_times_out(tmp_path: Path) -> None:
    with pytest.raises(FlowscopeError, match="timed out after 1s"):
        process.run_step(["sleep", "20"], component="jaeger", what="compiling", log=tmp_path /
                         "l.log", cwd=tmp_path, env=None, timeout_s=1,
                         progress=process.Progress("jaeger"))


def test_a_cancelled_step_is_killed_at_once_and_says_so(tmp_path: Path) -> None:
    cancel = threading.Event()
    log = tmp_path / "step.log"
    marker = tmp_path / "started"
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(FlowscopeError, match="cancelled") as raised:
        process.run_step([sys.executable, "-c",
                          f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); "
                          "time.sleep(120)"],
                         component="build", what="a long build", log=log, cwd=tmp_path,
                         env=None, timeout_s=60, progress=process.Progress("build"),
                         every_s=30, cancel=cancel)
    timer.cancel()
    assert raised.value.component == "build"
    assert marker.exists()  # it did run
    assert time.monotonic() - started < 30  # killed, not waited for
