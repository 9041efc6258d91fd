"""Run records (``runs/<run-id>.json``): what one command did to every selected host, signed and
chained to the generation of the share's history it left behind; and run markers
(``runs/<run-id>.running``): a run still under way."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import IntegrityError
from orchestrator.share.layout import format_time
from orchestrator.share.manifest import parse_iso, sign_document, verify_document
from orchestrator.status import Status


@dataclass(frozen=True)
class HostOutcome:
    """How one host ended in one run. ``kind`` is an ``ErrorKind`` value for failures."""

    host: str
    group: str
    role: str
    status: Status
    kind: str | None = None
    message: str | None = None
    entry_id: str | None = None
    sha256: str | None = None
    size: int | None = None
    duration: float = 0.0
    scsm_version: str | None = None
    attempts: int = 0
    method: str | None = None  # how the password reached SecureStorageBackup.exe: stdin, console, wizard
    warning: str | None = None  # e.g. the server's temporary folder could not be removed

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_json(cls, data: object) -> HostOutcome:
        if not isinstance(data, dict):
            raise ValueError("an outcome is not an object")
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("host", "group", "role", "status"):
            if not isinstance(values.get(key), str):
                raise ValueError(f"outcome field {key!r} is missing or not a string")
        values["status"] = Status(values["status"])
        return cls(**values)


@dataclass(frozen=True)
class RunRecord:
    """One run of a command over the fleet; written once, never changed."""

    run_id: str
    command: str
    started: datetime
    finished: datetime
    inventory: str
    share: str
    interrupted: bool
    outcomes: tuple[HostOutcome, ...]
    generation: int | None = None  # of the share's history when the record was written
    head: str | None = None  # that generation's digest
    signed: bool = field(default=False, compare=False)  # read with a valid signature (legacy: none)

    def outcome(self, host: str) -> HostOutcome | None:
        return next((outcome for outcome in self.outcomes if outcome.host == host), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "started": format_precise(self.started),
            "finished": format_precise(self.finished),
            "inventory": self.inventory,
            "share": self.share,
            "interrupted": self.interrupted,
            "outcomes": [outcome.to_json() for outcome in self.outcomes],
            "generation": self.generation,
            "head": self.head,
        }

    def to_bytes(self, key: Ed25519PrivateKey | None = None) -> bytes:
        """The record's file; signed with ``key`` (every field) when given."""
        document = self.to_json() if key is None else sign_document(self.to_json(), key)
        return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(
        cls, data: bytes, *, name: str = "run record", verifier: Ed25519PublicKey | None = None
    ) -> RunRecord:
        """Parse a run record; IntegrityError naming ``name`` if it is malformed, or, with
        ``verifier``, if it carries a signature that does not verify (an unsigned one reads as
        ``signed=False``: the caller decides what an unsigned record is worth)."""
        try:
            document = json.loads(data.decode("utf-8"))
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            signed = False
            if verifier is not None and document.get("signature") is not None:
                verify_document(document, verifier, name)
                signed = True
            generation = document.get("generation")
            if generation is not None and (not isinstance(generation, int) or isinstance(generation, bool)):
                raise ValueError("'generation' is not an integer")
            for key in ("run_id", "command", "started", "finished", "inventory", "share"):
                if not isinstance(document.get(key), str):
                    raise ValueError(f"field {key!r} is missing or not a string")
            outcomes = document.get("outcomes")
            if not isinstance(outcomes, list):
                raise ValueError("'outcomes' is not a list")
            return cls(
                run_id=document["run_id"],
                command=document["command"],
                started=parse_iso(document["started"]),
                finished=parse_iso(document["finished"]),
                inventory=document["inventory"],
                share=document["share"],
                interrupted=bool(document.get("interrupted", False)),
                outcomes=tuple(HostOutcome.from_json(outcome) for outcome in outcomes),
                generation=generation,
                head=document["head"] if isinstance(document.get("head"), str) else None,
                signed=signed,
            )
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise IntegrityError(f"{name} is not a valid run record: {exc}") from None


MARKER_FORMAT = "keyfleet-run-marker/1"


@dataclass(frozen=True)
class RunMarker:
    """A run under way: written (signed) before the run contacts any server, and so before its first
    commit; removed once its run record is written. An audit beside the run tells the generations it
    committed so far (no record yet) from generations whose record was lost: by the marker, until
    ``until``, the latest the run can still be going (its hosts' deadlines, then the record)."""

    run_id: str
    command: str
    started: datetime
    until: datetime

    def to_bytes(self, key: Ed25519PrivateKey | None) -> bytes:
        document: dict[str, Any] = {
            "format": MARKER_FORMAT,
            "run_id": self.run_id,
            "command": self.command,
            "started": format_precise(self.started),
            "until": format_precise(self.until),
        }
        if key is not None:
            document = sign_document(document, key)
        return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str, verifier: Ed25519PublicKey) -> RunMarker:
        """Parse a marker signed by ``verifier``'s key; IntegrityError naming ``name`` otherwise (an
        unsigned marker proves nothing, so it is refused)."""
        try:
            document = json.loads(data.decode("utf-8"))
            if not isinstance(document, dict) or document.get("format") != MARKER_FORMAT:
                raise ValueError(f"not a {MARKER_FORMAT} document")
            verify_document(document, verifier, name)
            for key in ("run_id", "command", "started", "until"):
                if not isinstance(document.get(key), str):
                    raise ValueError(f"field {key!r} is missing or not a string")
            return cls(
                run_id=document["run_id"],
                command=document["command"],
                started=parse_iso(document["started"]),
                until=parse_iso(document["until"]),
            )
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise IntegrityError(f"{name} is not a valid run marker: {exc}") from None


def format_precise(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds: run records of one second still sort by start."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-<6 hex>``: sorts by start time, unique across controllers."""
    return f"{format_time(now or datetime.now(UTC))}-{secrets.token_hex(3)}"
