"""Libraries never print to the terminal; their records reach the debug log only with -v."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.logs import QUIET_LIBRARIES, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    logging.captureWarnings(False)
    for name in (*QUIET_LIBRARIES, "keyfleet"):
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.setLevel(logging.NOTSET)
        library.propagate = True


def shout() -> None:
    try:
        raise ConnectionResetError("cache reset")
    except ConnectionResetError:
        logging.getLogger("smbclient._pool").exception("Failed to close connection")
    logging.getLogger("urllib3.connectionpool").warning("Retrying after connection broken")
    logging.getLogger("spnego").error("negotiation detail")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library warning", DeprecationWarning, stacklevel=1)


@pytest.mark.parametrize("verbose", [False, True])
def test_library_records_never_reach_the_terminal(tmp_path: Path, capsys, restore_logging, verbose):
    debug_log = tmp_path / "debug.log"
    setup_logging(verbose=verbose, debug_log=debug_log)
    shout()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    for handler in logging.getLogger("keyfleet").handlers:
        handler.flush()
    text = debug_log.read_text()
    if verbose:
        assert "Failed to close connection" in text and "ConnectionResetError" in text
        assert "Retrying after connection broken" in text and "a library warning" in text
    else:
        assert "Failed to close connection" not in text and "a library warning" not in text


def test_with_v_no_library_copies_tokens_or_messages_into_the_debug_log(tmp_path: Path, restore_logging):
    """pyspnego's DEBUG records carry authentication tokens (NTLM's challenge and NTLMv2 response: enough to
    test password guesses offline), smbprotocol's hex dumps of SMB messages (key files' bytes): not even
    -v lets them into the debug log; their INFO records and everything of the other libraries go in."""
    debug_log = tmp_path / "debug.log"
    setup_logging(verbose=True, debug_log=debug_log)
    logging.getLogger("spnego._ntlm").debug("NTLM step output: TlRMTVNTUAADAAAA")
    logging.getLogger("smbprotocol.connection").debug("Packet dump: fe 53 4d 42")
    logging.getLogger("spnego._ntlm").info("spnego info record")
    logging.getLogger("smbprotocol.connection").info("Negotiated dialect: 785")
    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTP connection")
    for handler in logging.getLogger("keyfleet").handlers:
        handler.flush()
    text = debug_log.read_text()
    assert "TlRMTVNT" not in text and "fe 53 4d 42" not in text
    assert "spnego info record" in text and "Negotiated dialect" in text and "Starting new HTTP connection" in text
