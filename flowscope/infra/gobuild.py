"""Build a Go program from the Go module proxy into the cache, once (Jaeger, nats-server).

The module and build caches are shared under the cache folder; each program gets a folder of
its own with a throwaway go.mod that pins it as a tool, and its build logs.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from base.errors import FlowscopeError
from flowscope.infra import process


@dataclass(frozen=True)
class GoProgram:
    """A program to build: its module, package and pinned version, and where it goes."""

    component: str  # who builds it, for progress and errors
    title: str  # what it is called in messages ("Jaeger v2")
    module: str
    package: str
    version: str
    build_dir: Path
    binary: Path
    go_cache: Path
    external_hint: str  # how to use an existing one instead

    @property
    def build_log(self) -> Path:
        """Where `go get` writes."""
        return self.build_dir / "build.log"

    @property
    def compile_log(self) -> Path:
        """Where `go build` writes."""
        return self.build_dir / "compile.log"


def go_environment(go_cache: Path) -> dict[str, str]:
    """The caller's environment with the caches in go_cache, modules from the proxy, and no
    toolchain download or cgo."""
    env = dict(os.environ)
    env.update(GOMODCACHE=str(go_cache / "mod"), GOCACHE=str(go_cache / "build"),
               GOFLAGS="-mod=mod", GOTOOLCHAIN="local", CGO_ENABLED="0")
    return env


def build(program: GoProgram, *, timeout_s: float, progress: process.Progress,
          cancel: threading.Event | None = None) -> Path:
    """Build the program's binary unless it is there; kill the build (and raise
    FlowscopeError) when cancel is set while it runs."""
    if program.binary.exists():
        return program.binary
    go = shutil.which("go")
    if go is None:
        raise FlowscopeError(program.component, f"go was not found on PATH; the native "
                             f"{program.title} is built from the Go module proxy",
                             hint=f"install Go, or {program.external_hint}")
    program.build_dir.mkdir(parents=True, exist_ok=True)
    name = program.binary.name
    (program.build_dir / "go.mod").write_text(f"module flowscope.native/{name}\n\ngo 1.24\n")
    (program.build_dir / "go.sum").unlink(missing_ok=True)
    env = go_environment(program.go_cache)
    progress.say(f"building {program.title} ({program.module} {program.version}) from the Go "
                 f"module proxy (log: {program.build_log})")
    process.run_step([go, "get", "-tool", f"{program.package}@{program.version}"],
                     component=program.component, what=f"downloading the {name} modules",
                     log=program.build_log, cwd=program.build_dir, env=env, timeout_s=timeout_s,
                     progress=progress, every_s=15, cancel=cancel)
    progress.say("modules downloaded; compiling")
    partial = program.binary.with_name(f"{name}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    process.run_step([go, "build", "-v", "-o", str(partial), program.package],
                     component=program.component, what=f"compiling {name}",
                     log=program.compile_log, cwd=program.build_dir, env=env,
                     timeout_s=timeout_s, progress=progress, every_s=15, cancel=cancel)
    partial.replace(program.binary)
    progress.say(f"built {program.binary}")
    return program.binary
