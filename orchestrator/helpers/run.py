"""Run one remote helper on a host: the bootstrap with its stdin request over a WinRM session, parsed.

Every job that touches a server (backup, restore, doctor, collect) goes through :func:`run_helper`,
so each helper run honours the host's deadline and cancel flag, caps its output, reports its
phases to the runner, and sends the secret only as the stdin's second line (see ``remote``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from orchestrator.helpers import remote
from orchestrator.runner.pool import HostContext
from orchestrator.secret import Secret

if TYPE_CHECKING:  # the WinRM stack loads when a session is made (see jobs.backup.load_session_stack)
    from orchestrator.session.winrm import WinRMSession

R = TypeVar("R")


@dataclass(frozen=True)
class Helper(Generic[R]):
    """A helper script and the parser of its result: what ``run_helper`` returns is typed by it."""

    name: str  # one of remote.HELPERS
    parse: Callable[[str, bytes, bytes, int], R]


EXPORT = Helper("export", remote.parse_export)
RESTORE = Helper("restore", remote.parse_restore)
PROBE = Helper("probe", remote.parse_probe)
SMOKE = Helper("smoke", remote.parse_smoke)
COLLECT = Helper("collect", remote.parse_collect)
COLLECT_REMOVE = Helper("collect", remote.parse_collect_remove)  # the same script, asked to delete a file


def run_helper(
    ctx: HostContext, session: WinRMSession, helper: Helper[R], params: dict[str, object], secret: Secret | None
) -> R:
    """Run ``helper`` with ``params`` (and ``secret``, on stdin only) on ``ctx.host`` through ``session``.

    Raises HostFailure (with its kind) for every failure: connection, timeout, cancel, a helper
    error or a result that does not parse.
    """
    result = session.run(
        remote.bootstrap_command_line(),
        remote.build_stdin(helper.name, params, secret),
        deadline=ctx.deadline,
        cancel=ctx.cancel,
        max_output=remote.MAX_OUTPUT_BYTES,
        on_phase=ctx.report,
    )
    return helper.parse(ctx.host.name, result.stdout, result.stderr, result.exit_code)
