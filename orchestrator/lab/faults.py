"""Per-host lab faults: parsing of fault specs such as ``latency:0.5`` or ``http500:Receive``."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError

TRANSPORT_FAULTS = (
    "down",
    "blackhole",
    "latency",
    "auth-failure",
    "http500",
    "timed-out",  # timed-out:OP: OP answered at once with the OperationTimeout fault (repeatable: one per OP)
    "drop-receive",
    "no-spn",
    "unsealed-reply",  # in a sealed (message-encrypted) session, replies come back in the clear
    "garbled-seal",  # sealed replies damaged: payload (a flipped byte), short (one byte), stub (no length)
)
KERBEROS_FAULTS = ("no-spn",)  # only where the lab runs a KDC (lab.kerberos): no service principal registered
MACHINE_FAULTS = (
    "corrupt-output",
    "truncate-output",
    "tool-missing",
    "tool-failing",
    "tool-hanging",
    "not-admin",
    "wrong-role",
    "disk-full",
    "constrained-language",  # powershell.exe runs in Constrained Language Mode (AppLocker/WDAC)
    "remote-shell-disabled",  # Group Policy "Allow Remote Shell Access" is disabled: Create faults
    "cleanup-locked",  # antivirus holds a file in the helper's temporary folder
    "tool-exits-early",  # the tool ends before it reads its stdin
    "tool-readkey",  # the tool reads the password with Console.ReadKey (needs a console)
    "tool-wizard-only",  # the tool shows no prompt and waits for a desktop
)
FAULT_KINDS = TRANSPORT_FAULTS + MACHINE_FAULTS
WSMAN_OPERATIONS = ("Create", "Command", "Send", "Receive", "Signal", "Delete")
GARBLES = ("payload", "short", "stub")
_ROLES = ("management_server", "dw_management_server", "self_service_portal")


@dataclass(frozen=True)
class Fault:
    kind: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"


def parse_fault(spec: str) -> Fault:
    """Parse one fault spec; raise ConfigError naming the valid choices."""
    kind, _, arg = spec.strip().partition(":")
    if kind not in FAULT_KINDS:
        raise ConfigError(f"unknown lab fault {kind!r} (choose from {', '.join(FAULT_KINDS)})")
    if kind == "latency":
        try:
            if float(arg) < 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"fault {spec!r}: latency needs seconds, e.g. latency:0.5") from None
    elif kind in ("http500", "timed-out"):
        if arg not in WSMAN_OPERATIONS:
            raise ConfigError(f"fault {spec!r}: {kind} needs one of {', '.join(WSMAN_OPERATIONS)}")
    elif kind == "garbled-seal":
        if arg and arg not in GARBLES:
            raise ConfigError(f"fault {spec!r}: garbled-seal takes one of {', '.join(GARBLES)}")
    elif kind == "wrong-role":
        if arg and arg not in _ROLES:
            raise ConfigError(f"fault {spec!r}: wrong-role takes one of {', '.join(_ROLES)}")
    elif arg:
        raise ConfigError(f"fault {spec!r}: {kind} takes no argument")
    return Fault(kind, arg or None)


def parse_faults(specs: tuple[str, ...] | list[str]) -> tuple[Fault, ...]:
    return tuple(parse_fault(s) for s in specs)


def parse_fleet_faults(spec: str) -> dict[str, tuple[Fault, ...]]:
    """Parse ``keyfleet lab up --faults 'HOST=SPEC,SPEC;HOST2=SPEC'`` into faults per host."""
    result: dict[str, tuple[Fault, ...]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        host, sep, faults = part.partition("=")
        if not sep or not host.strip() or not faults.strip():
            raise ConfigError(f"--faults: {part!r} is not HOST=FAULT[,FAULT...]")
        result[host.strip()] = parse_faults([f for f in faults.split(",") if f.strip()])
    return result


def find(faults: tuple[Fault, ...], kind: str) -> Fault | None:
    return next((f for f in faults if f.kind == kind), None)
