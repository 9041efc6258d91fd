"""The SMB share against a real Samba smbd: every Share guarantee, error classes, encryption, a crash."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import smbclient

from orchestrator.errors import ShareError
from orchestrator.secret import Secret
from orchestrator.share.layout import LOCK_NAME
from orchestrator.share.smb import SMBShare
from tests.share_contract import ShareContract, ShareTarget
from tests.smbd import SmbServer, smbd_server  # noqa: F401 - pytest finds the session fixture here

pytestmark = pytest.mark.smb

REPO = Path(__file__).resolve().parent.parent
KEY = "CONTOSO-PROD/management_server/scsm-ms01/20260101T000000Z-0123456789ab.bin"

# A second controller process: takes the lock, says so, and holds it until it is killed.
LOCK_HOLDER = """
import os, sys
from orchestrator.secret import Secret
from orchestrator.share.smb import SMBShare
host, port, share, path, user = sys.argv[1:6]
smb = SMBShare(host, int(port), share, path, user, Secret(os.environ["KEYFLEET_TEST_SMB_PASSWORD"]), False)
with smb.lock(timeout=10):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def folder() -> str:
    """A fresh folder on the share for each test, so tests never see each other's files."""
    return f"t-{secrets.token_hex(4)}/scsm"


@pytest.fixture
def server(smbd_server: SmbServer) -> SmbServer:  # noqa: F811 - the imported fixture, by name
    smbd_server.start()  # a no-op unless an earlier test killed it
    return smbd_server


def open_share(
    server: SmbServer,
    folder: str,
    *,
    share: str = "",
    port: int = 0,
    username: str = "",
    password: Secret | None = None,
    require_encryption: bool = False,
    connect_timeout: float = 10.0,
) -> SMBShare:
    """A controller's view of ``folder`` on the test server, with its own SMB session."""
    return SMBShare(
        server.host,
        port or server.port,
        share or server.share,
        folder,
        username or server.user,
        password or server.password,
        require_encryption,
        connect_timeout=connect_timeout,
    )


@pytest.fixture
def share(server: SmbServer, folder: str) -> Iterator[SMBShare]:
    smb = open_share(server, folder)
    try:
        yield smb
    finally:
        smb.close()


def on_disk(server: SmbServer, folder: str) -> Path:
    return server.root / folder


def temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob(".*.tmp-*")]


def assert_no_secret(exc: BaseException, *values: str) -> None:
    """No password in the error, nor in anything it chains to."""
    seen: BaseException | None = exc
    while seen is not None:
        for value in values:
            assert value not in str(seen) and value not in repr(seen)
        seen = seen.__cause__ or seen.__context__


# -- the Share contract, and what only SMB has -------------------------------------------------------


class TestSMBShareContract(ShareContract):
    """The guarantees every backend keeps, on a folder of the Samba share (children use the URL)."""

    @pytest.fixture
    def target(self, server: SmbServer, folder: str) -> ShareTarget:
        return ShareTarget(url=server.url(folder), env=server.share_env(), local_root=on_disk(server, folder))


def test_url_names_server_port_share_and_path_but_no_credentials(server: SmbServer) -> None:
    smb = open_share(server, "backups/scsm")
    assert smb.url == f"smb://{server.host}:{server.port}/backup/backups/scsm"
    assert server.password.reveal() not in repr(smb) + smb.url


def test_remove_stale_temporaries_spares_a_live_writer(
    share: SMBShare,
    server: SmbServer,
    folder: str,
) -> None:
    share.write_new(KEY, b"k")
    root = on_disk(server, folder)
    for stale in (root / ".manifest.json.tmp-aa", root / Path(KEY).parent / ".x.bin.tmp-bb"):
        stale.write_bytes(b"partial")  # owned by root here: deleting needs only the folder's permission
    # Another controller mid-write: its temp is open (the way SMBShare holds it: no delete sharing).
    pool: dict[str, object] = {}
    live = smbclient.open_file(
        "\\".join(["", "", server.host, server.share, *folder.split("/"), *Path(KEY).parent.parts, ".y.bin.tmp-cc"]),
        "xb",
        share_access="r",
        port=server.port,
        username=server.user,
        password=server.password.reveal(),
        connection_cache=pool,
    )
    try:
        assert share.remove_stale_temporaries() == 2
        assert [path.name for path in temporaries(root)] == [".y.bin.tmp-cc"]
    finally:
        live.close()
        smbclient.reset_connection_cache(connection_cache=pool)
    assert share.remove_stale_temporaries() == 1
    assert list(share.list_files()) == [KEY]


def test_concurrent_writers_on_one_share_all_land(share: SMBShare) -> None:
    names = [f"g/r/h{n}/f{m}.bin" for n in range(6) for m in range(3)]

    def write(group: list[str]) -> None:
        for name in group:
            share.write_new(name, name.encode())

    threads = [threading.Thread(target=write, args=(names[n::6],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(share.list_files()) == sorted(names)
    assert all(share.read_bytes(name) == name.encode() for name in names)


def test_a_file_deleted_while_another_handle_holds_it_is_gone(share: SMBShare, server: SmbServer, folder: str) -> None:
    """A run removes its marker while an audit has it open: until that handle closes, Windows and Samba
    answer STATUS_DELETE_PENDING, which smbprotocol maps to no errno. The name is gone all the same."""
    share.write_new("runs/x.running", b"marker")
    unc = f"\\\\{server.host}\\{server.share}\\{folder.replace('/', chr(92))}\\runs\\x.running"
    other = open_share(server, folder)  # another controller, its own session
    try:
        kwargs = other._kwargs()
        other._session()
        with smbclient.open_file(unc, "rb", share_access="rwd", **kwargs):
            share.remove("runs/x.running")
            with pytest.raises(ShareError):
                share.read_bytes("runs/x.running")
            assert share.exists("runs/x.running") is False  # though a listing still shows it
    finally:
        other.close()
    assert share.exists("runs/x.running") is False


# -- the lock ------------------------------------------------------------------------------------------


def start_lock_holder(server: SmbServer, folder: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), KEYFLEET_TEST_SMB_PASSWORD=server.password.reveal())
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, server.host, str(server.port), server.share, folder, server.user],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_is_released_by_the_server_when_its_holder_dies(
    share: SMBShare,
    server: SmbServer,
    folder: str,
) -> None:
    holder = start_lock_holder(server, folder)
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with share.lock(timeout=10):
        pass
    assert time.monotonic() - started < 5


def test_lock_serialises_two_sessions_in_one_process(share: SMBShare, server: SmbServer, folder: str) -> None:
    with (
        open_share(server, folder) as other,
        share.lock(timeout=1),
        pytest.raises(ShareError, match="timed out"),
        other.lock(timeout=0.2),
    ):
        pass
    with open_share(server, folder) as other, other.lock(timeout=1):
        pass


# -- errors --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_pool() -> Iterator[None]:
    """Auth tests must not reuse a pooled session (SMBShare has its own pool; the global one is reset too)."""
    smbclient.reset_connection_cache()
    yield
    smbclient.reset_connection_cache()


@pytest.mark.usefixtures("fresh_pool")
def test_wrong_password_is_a_logon_failure_without_the_password(server: SmbServer) -> None:
    wrong = Secret(f"wrong-{secrets.token_hex(8)}", "test")
    with open_share(server, "x", password=wrong) as smb, pytest.raises(ShareError) as caught:
        smb.write_new(KEY, b"k")
    assert "logon failure" in str(caught.value)
    assert server.user in str(caught.value)
    assert str(caught.value).startswith(f"share smb://{server.host}:{server.port}/backup/x: cannot connect: ")
    assert_no_secret(caught.value, wrong.reveal(), server.password.reveal())


@pytest.mark.usefixtures("fresh_pool")
def test_unknown_user_is_a_logon_failure(server: SmbServer) -> None:
    with open_share(server, "x", username="nobody") as smb, pytest.raises(ShareError, match="logon failure"):
        list(smb.list_files())


@pytest.mark.usefixtures("fresh_pool")
def test_missing_share(server: SmbServer) -> None:
    with open_share(server, "x", share="nosuch") as smb, pytest.raises(ShareError) as caught:
        smb.read_bytes("manifest.json")
    assert "share 'nosuch' does not exist" in str(caught.value)
    assert_no_secret(caught.value, server.password.reveal())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server(server: SmbServer) -> None:
    with open_share(server, "x", port=_closed_port()) as smb, pytest.raises(ShareError) as caught:
        smb.exists("manifest.json")
    assert "unreachable" in str(caught.value) and "refused" in str(caught.value)
    assert_no_secret(caught.value, server.password.reveal())


def test_server_that_never_answers(server: SmbServer) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = int(silent.getsockname()[1])
        smb = open_share(server, "x", port=port, connect_timeout=1.0)
        with smb, pytest.raises(ShareError, match="no SMB answer"):
            smb.exists("manifest.json")


# -- encryption ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("required", [True, False])
def test_require_encryption_is_what_the_server_sees(
    server: SmbServer,
    folder: str,
    required: bool,
) -> None:
    with open_share(server, folder, require_encryption=required) as smb, smb.lock():
        degree = server.open_file_encryption(f"{folder}/{LOCK_NAME}")
    assert degree == ("full" if required else "none")


def test_share_that_demands_encryption_works_either_way(server: SmbServer, folder: str) -> None:
    for required in (False, True):
        with open_share(
            server, f"{folder}-{required}", share=server.encrypted_share, require_encryption=required
        ) as smb:
            smb.write_new(KEY, b"sealed")
            assert smb.read_bytes(KEY) == b"sealed"


# -- a crash in the middle ---------------------------------------------------------------------------------


def test_smbd_killed_mid_write_leaves_no_torn_file_and_the_share_recovers(
    share: SMBShare,
    server: SmbServer,
    folder: str,
) -> None:
    root = on_disk(server, folder)
    failure: list[BaseException] = []

    def write_big() -> None:
        try:
            share.write_new(KEY, b"\0" * (128 << 20))
        except ShareError as exc:
            failure.append(exc)

    writer = threading.Thread(target=write_big)
    try:
        writer.start()
        deadline = time.monotonic() + 20
        while not any(path.stat().st_size > 1 << 20 for path in temporaries(root)):
            assert time.monotonic() < deadline and writer.is_alive(), "the write never got going"
            time.sleep(0.005)
        server.kill()
        writer.join(timeout=30)
    finally:
        server.start()
    assert not writer.is_alive()
    assert len(failure) == 1 and "connection to" in str(failure[0]) and "lost" in str(failure[0])
    assert_no_secret(failure[0], server.password.reveal())
    assert not (root / KEY).exists()
    assert len(temporaries(root)) == 1  # the partial temp: the rename never happened
    # The same share object reconnects by itself and cleans up.
    assert share.remove_stale_temporaries() == 1
    share.write_new(KEY, b"after the crash")
    assert share.read_bytes(KEY) == b"after the crash"


def test_a_folder_another_first_backup_makes_between_the_two_looks_is_a_folder(
    server: SmbServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a local share: one run sees no folder, the other makes it before the first looks again."""
    from orchestrator.share.base import FolderState

    smb = open_share(server, f"{folder}/raced")
    real = SMBShare._exists

    def made_meanwhile(self: SMBShare, unc: str) -> bool:
        (on_disk(server, folder) / "raced").mkdir(parents=True, exist_ok=True)
        return real(self, unc)

    monkeypatch.setattr(SMBShare, "_exists", made_meanwhile)
    try:
        (on_disk(server, folder)).mkdir(parents=True, exist_ok=True)
        assert smb.folder_state() is FolderState.EXISTS
    finally:
        smb.close()
