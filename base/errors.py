"""The one exception root: every error names the component, the cause and where its log is."""

from __future__ import annotations

from pathlib import Path


class FlowscopeError(Exception):
    """An error a person can act on, shown without a stack trace."""

    def __init__(
        self,
        component: str,
        cause: str,
        *,
        log: Path | None = None,
        hint: str | None = None,
        log_tail: str | None = None,
    ) -> None:
        super().__init__(f"{component}: {cause}")
        self.component = component
        self.cause = cause
        self.log = log
        self.hint = hint
        self.log_tail = log_tail

    def render(self) -> str:
        """The full message for a terminal: cause, hint, log location and its last lines."""
        lines = [f"flowscope: {self.component}: {self.cause}"]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        if self.log:
            lines.append(f"  log: {self.log}")
        if self.log_tail:
            lines.append("  last lines of the log:")
            lines.extend(f"    | {line}" for line in self.log_tail.splitlines())
        return "\n".join(lines)


class SettingsError(FlowscopeError):
    """One or more environment variables are invalid; all of them are named."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("settings", "; ".join(problems))
        self.problems = problems
