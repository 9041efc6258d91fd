"""The smbprotocol internals share/smbadapter.py relies on are still there (fails with what changed)."""

from __future__ import annotations

from orchestrator.share import smbadapter


def test_smbprotocol_internals_used_by_the_adapter_exist() -> None:
    problems = smbadapter.check_internals()
    assert problems == [], "\n".join(problems)


def test_the_smb_backend_reaches_smbprotocol_internals_only_through_the_adapter() -> None:
    from pathlib import Path

    source = Path(smbadapter.__file__).with_name("smb.py").read_text(encoding="utf-8")
    for internal in ("SMB2SetInfoRequest", "FileRenameInformation", ".smb_info", ".transport", "smbclient._"):
        assert internal not in source, f"share/smb.py uses {internal}: move it into share/smbadapter.py"
