"""Leak search: collect every byte a run produced and prove no secret is among them."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.lab.faults import FAULT_KINDS, KERBEROS_FAULTS

_EXAMPLE_ARGUMENT = {"latency": "latency:0.2", "http500": "http500:Send", "timed-out": "timed-out:Command"}
# one example of every lab fault kind, plus a run without faults (Kerberos faults: tests/test_kerberos.py)
EVERY_FAULT = ["none", *(_EXAMPLE_ARGUMENT.get(kind, kind) for kind in FAULT_KINDS if kind not in KERBEROS_FAULTS)]
# two hosts, one per auth mode, with timeouts short enough for blackhole and tool-hanging
LEAK_FLEET: dict[str, dict[str, Any]] = {
    "LEAK": {
        "l-ms01": {"role": "management_server"},
        "l-dw01": {"role": "dw_management_server", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
    }
}
LEAK_TIMEOUTS = {"connect_timeout": "2s", "operation_timeout": "1s", "host_timeout": "5s", "retries": 0}


def leak_faults(fault: str) -> dict[str, list[str]]:
    """The ``faults`` argument of make_lab_inventory that puts ``fault`` on every leak-test host."""
    return {} if fault == "none" else {host: [fault] for host in LEAK_FLEET["LEAK"]}


def run_with_unique_secrets(
    tmp_path: Path, keyfleet: Callable[..., Any], fault: str, *args: str
) -> tuple[Any, Any, LeakSearch]:
    """Run ``keyfleet ARGS -i INV --json -v`` on the leak fleet with ``fault`` and a unique backup
    password and WinRM password (both given by environment); return the run, the lab files and a
    LeakSearch over everything the run produced: stdout, stderr, argv and every file under tmp_path
    (share, run records, lab journal and state, the debug log in the private HOME)."""
    from tests.conftest import make_lab_inventory

    password = f"Unique-Backup-{os.urandom(6).hex()}"
    winrm_password = f"Unique-WinRM-{os.urandom(6).hex()}"
    lab = make_lab_inventory(
        tmp_path / "lab",
        fleet=LEAK_FLEET,
        faults=leak_faults(fault),
        winrm_password="env:KF_TEST_WINRM_PASSWORD",
        defaults=LEAK_TIMEOUTS,
    )
    env = {"KEYFLEET_BACKUP_PASSWORD": password, "KF_TEST_WINRM_PASSWORD": winrm_password}
    run = keyfleet(*args, "-i", str(lab.inventory), "--json", "-v", env=env)
    # an NTLM message in any encoding (its NTLMv2 response lets the WinRM password be guessed offline)
    ntlm = "NTLMSSP\0"
    search = LeakSearch({"backup password": password, "winrm password": winrm_password, "NTLM message": ntlm})
    search.add("stdout", run.stdout)
    search.add("stderr", run.stderr)
    search.add("argv", " ".join(run.args))
    search.add_folder(tmp_path)
    return run, lab, search


def _base64_forms(raw: bytes) -> list[bytes]:
    """The secret's base64 at each of the three alignments it can have inside a longer base64 text
    (a Basic auth header, base64'd JSON): the characters that depend on the secret alone."""
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        start = (offset * 4 + 2) // 3  # skip characters mixed with the bytes before the secret
        end = ((offset + len(raw)) // 3) * 4  # and the ones mixed with what follows
        forms.append(encoded[start:end])
    return forms


def encodings(secret: str) -> dict[str, bytes]:
    """The forms a leaked secret could take: UTF-8, UTF-16LE (Windows, -EncodedCommand), base64."""
    raw, wide = secret.encode(), secret.encode("utf-16-le")
    found = {"utf-8": raw, "utf-16le": wide}
    for name, data in (("base64", raw), ("base64-utf16", wide)):
        for offset, form in enumerate(_base64_forms(data)):
            found[f"{name}@{offset}"] = form
    return found


@dataclass
class LeakSearch:
    """Everything a run produced: named blobs and whole folders, searched for secrets."""

    secrets: dict[str, str]
    blobs: dict[str, bytes] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)
    exclude: set[Path] = field(default_factory=set)  # inputs that legitimately hold a secret

    def add(self, name: str, data: bytes | str) -> None:
        self.blobs[name] = self.blobs.get(name, b"") + (data.encode() if isinstance(data, str) else data)

    def add_folder(self, path: Path) -> None:
        self.folders.append(path)

    def _sources(self) -> list[tuple[str, bytes]]:
        sources = list(self.blobs.items())
        seen: set[Path] = set()
        for folder in self.folders:
            for root, _dirs, files in os.walk(folder):
                for name in files:
                    path = Path(root, name)
                    if path in seen or path.resolve() in {p.resolve() for p in self.exclude}:
                        continue
                    seen.add(path)
                    try:
                        sources.append((str(path), path.read_bytes()))
                    except OSError:
                        continue
        return sources

    def where(self, needle: bytes) -> list[str]:
        """The sources holding ``needle`` (binary secrets such as keytab keys)."""
        return [source for source, data in self._sources() if needle in data]

    def findings(self) -> list[str]:
        found = []
        sources = self._sources()
        for secret_name, secret in self.secrets.items():
            for form, needle in encodings(secret).items():
                for source, data in sources:
                    if needle in data:
                        found.append(f"{secret_name} ({form}) in {source}")
        return found

    def assert_clean(self) -> int:
        """Fail with every finding; return how many sources were searched (to prove it searched)."""
        findings = self.findings()
        assert not findings, "secret leaked:\n" + "\n".join(findings)
        return len(self._sources())
