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


def test_reparse_points_listed_by_a_windows_server_are_links_never_entered() -> None:
    """Samba 4.17 never lists a reparse point (README, "The backup share"); a Windows server lists a
    symbolic link to a folder and a junction as FILE_ATTRIBUTE_DIRECTORY|FILE_ATTRIBUTE_REPARSE_POINT
    (0x410), a file symlink as 0x420 (MS-FSCC 2.6): the SMB backend's walk classifies by these bits."""
    from orchestrator.share.base import ItemKind
    from orchestrator.share.smb import listed_kind

    assert listed_kind("PROD", 0x410) is ItemKind.LINK  # junction / directory symlink: not entered
    assert listed_kind("a.bin", 0x420) is ItemKind.LINK
    assert listed_kind(".a.bin.tmp-0a1b", 0x400) is ItemKind.LINK
    assert listed_kind("PROD", 0x10) is None  # a plain folder is entered
    assert listed_kind("a.bin", 0x20) is ItemKind.FILE
    assert listed_kind(".a.bin.tmp-0a1b", 0x80) is ItemKind.TEMPORARY
    # the listing's reparse tag (MS-FSCC 2.1.2.1): a name surrogate leads elsewhere, anything else is the file
    assert listed_kind("PROD", 0x410, 0xA000000C) is ItemKind.LINK  # IO_REPARSE_TAG_SYMLINK
    assert listed_kind("PROD", 0x410, 0xA0000003) is ItemKind.LINK  # IO_REPARSE_TAG_MOUNT_POINT (junction)
    assert listed_kind("a.bin", 0x420, 0x80000013) is ItemKind.FILE  # IO_REPARSE_TAG_DEDUP: read as is
    assert listed_kind("a.bin", 0x420, 0) is ItemKind.LINK  # no tag given: never followed
