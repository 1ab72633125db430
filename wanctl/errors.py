"""The one exception family users see.

Library code raises `WanctlError` (or a subclass) with what went wrong, why, and what to do;
only `wanctl.cli` turns it into a red message, a JSON document (`--json`) and an exit code.
"""

from __future__ import annotations

from collections.abc import Mapping

INTERRUPTED = 130  # 128 + SIGINT: how a shell reports a command stopped by Ctrl-C
TIMED_OUT = 124  # how `timeout(1)` reports a command it stopped


class WanctlError(Exception):
    """A failure the user can act on: `message` (what), `why`, `fix` (what to do), and the
    `details` a script acts on (a failed decode's kept latents, the command that finishes the
    job). `result` is what the command had produced when it failed (tune's refused plan)."""

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        why: str = "",
        fix: str = "",
        exit_code: int | None = None,
        details: Mapping[str, object] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.why = why
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code
        self.details = dict(details or {})
        self.result: object = None

    def __str__(self) -> str:
        parts = [self.message]
        if self.why:
            parts.append(f"why: {self.why}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "\n".join(parts)


class UsageError(WanctlError):
    """Bad arguments or input files: exit code 2, as for a command-line usage error."""

    exit_code = 2
