"""Logging set-up: a masking filter on every handler and a private debug log file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from orchestrator.secret import mask


class SecretMaskFilter(logging.Filter):
    """Second net behind the Secret type: masks every known secret value in a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:  # a traceback can quote a secret too: format it now, masked
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


# Libraries that log (smbclient logs a traceback when it resets its connection cache) or warn: never
# on the terminal; in the debug log only with -v.
QUIET_LIBRARIES = ("smbprotocol", "smbclient", "spnego", "winrm", "requests", "requests_ntlm", "urllib3", "py.warnings")
# Even with -v, no DEBUG records from these: pyspnego logs every authentication token it sends and receives
# (an NTLM challenge with its NTLMv2 response lets whoever reads the log test password guesses offline),
# smbprotocol every SMB message as a hex dump (the key files' bytes).
MOST_DETAIL = {"spnego": logging.INFO, "smbprotocol": logging.INFO}


def setup_logging(*, verbose: bool, debug_log: Path | None) -> None:
    logger = logging.getLogger("keyfleet")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("keyfleet: %(message)s"))
    console.addFilter(SecretMaskFilter())
    logger.addHandler(console)
    debug_file = _debug_file_handler(debug_log) if debug_log is not None else None
    if debug_file is not None:
        logger.addHandler(debug_file)
    logging.captureWarnings(True)
    for name in QUIET_LIBRARIES:
        library = logging.getLogger(name)
        library.propagate = False
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.addHandler(logging.NullHandler())  # no "last resort" printing to stderr
        if verbose and debug_file is not None:
            library.setLevel(MOST_DETAIL.get(name, logging.DEBUG))
            library.addHandler(debug_file)
        else:
            library.setLevel(logging.CRITICAL + 1)


def _debug_file_handler(debug_log: Path) -> logging.Handler | None:
    try:
        debug_log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(debug_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return None
    handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretMaskFilter())
    return handler
