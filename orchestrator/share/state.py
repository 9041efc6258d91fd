"""What this controller has seen of each share, kept outside the share (``~/.local/state/keyfleet``).

Per share (keyed by its signed ``share_id`` and the signing key): the newest generation seen and its
digest, so a share put back from an older copy is refused; and run records that could not be written
to the share, signed and kept here until the next run writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.privatefile import write_private
from orchestrator.share.history import History, HistoryError
from orchestrator.share.manifest import format_iso

STATE_ENV = "XDG_STATE_HOME"


def state_root() -> Path:
    """``$XDG_STATE_HOME/keyfleet``, else ``~/.local/state/keyfleet``."""
    base = os.environ.get(STATE_ENV)
    return (Path(base) if base else Path.home() / ".local" / "state") / "keyfleet"


@dataclass(frozen=True)
class Seen:
    generation: int
    head: str | None
    url: str
    time: str


class ShareState:
    """The controller's memory of one share."""

    def __init__(self, share_id: str, key_sha256: str, url: str, root: Path | None = None) -> None:
        self.url = url
        name = hashlib.sha256(f"{share_id}:{key_sha256}".encode()).hexdigest()[:32]
        base = root or state_root()
        self.path = base / "shares" / f"{name}.json"
        self.pending_dir = base / "pending-runs" / name

    def load(self) -> Seen | None:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            return Seen(int(document["generation"]), document.get("head"), str(document["url"]), str(document["time"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # an unreadable memory is no memory; the share's own checks still apply

    def check(self, history: History, seen: Seen | None) -> None:
        """HistoryError ``rollback`` when the share is older than what this controller saw (``seen``, from
        ``load``), or forked from it."""
        if seen is None:
            return
        if seen.generation > history.generation:
            raise HistoryError(
                "rollback",
                f"the share is at generation {history.generation}, but this controller saw generation "
                f"{seen.generation} on {seen.time}: it was rolled back (put back from an older copy?)",
            )
        if seen.generation == history.generation and seen.head != history.head:
            raise HistoryError(
                "rollback",
                f"generation {history.generation} of the share is not the one this controller saw on {seen.time}",
            )
        older = next((s for s in history.segments if s.generation == seen.generation), None)
        if older is not None and older.digest != seen.head:
            raise HistoryError(
                "rollback",
                f"generation {seen.generation} of the share is not the one this controller saw on {seen.time}",
            )

    def remember(self, history: History) -> None:
        """Record ``history``'s generation as seen, unless a newer one already is."""
        seen = self.load()
        if seen is not None and seen.generation >= history.generation:
            return
        document = {
            "url": self.url,
            "generation": history.generation,
            "head": history.head,
            "time": format_iso(datetime.now(UTC)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))

    # -- run records the share refused ------------------------------------------------------------

    def keep_pending(self, run_id: str, data: bytes) -> Path:
        self.pending_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.pending_dir / f"{run_id}.json"
        write_private(path, data)
        return path

    def pending(self) -> list[tuple[str, bytes]]:
        if not self.pending_dir.is_dir():
            return []
        return [(p.stem, p.read_bytes()) for p in sorted(self.pending_dir.glob("*.json"))]

    def drop_pending(self, run_id: str) -> None:
        (self.pending_dir / f"{run_id}.json").unlink(missing_ok=True)
