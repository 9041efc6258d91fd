"""Open a share from its URL: a local or mounted path, ``smb://server[:port]/share/path`` or a UNC path."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Credential
from orchestrator.secret import Secret
from orchestrator.share.base import Share
from orchestrator.share.local import LocalShare

SMB_PORT = 445
USER_ENV = "KEYFLEET_SHARE_USER"
PASSWORD_ENV = "KEYFLEET_SHARE_PASSWORD"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:// is a drive


@dataclass(frozen=True)
class SMBLocation:
    """Where an SMB share lives; ``path`` is the folder inside the share ('' for its root)."""

    server: str
    port: int
    share: str
    path: str
    username: str | None = None


def parse_smb_url(url: str) -> SMBLocation:
    """``smb://[user@]server[:port]/share[/path]`` or ``\\\\server\\share[\\path]``."""
    if url.startswith(("\\\\", "//")):
        parts = [p for p in re.split(r"[\\/]+", url) if p]
        if len(parts) < 2:
            raise ConfigError(f"share {url!r}: a UNC path needs a server and a share name", key="share.url")
        return SMBLocation(parts[0], SMB_PORT, parts[1], "/".join(parts[2:]))
    split = urlsplit(url)
    if split.password is not None:
        raise ConfigError(
            "share URL must not contain a password; use share.credential or KEYFLEET_SHARE_PASSWORD",
            key="share.url",
        )
    try:
        port = split.port or SMB_PORT
    except ValueError:
        raise ConfigError(f"share {url!r}: the port is not a number", key="share.url") from None
    parts = [unquote(p) for p in split.path.split("/") if p]
    if not split.hostname or not parts:
        raise ConfigError(f"share {url!r}: expected smb://server[:port]/share[/path]", key="share.url")
    if split.query or split.fragment:
        raise ConfigError(f"share {url!r}: query strings and fragments are not allowed", key="share.url")
    username = unquote(split.username) if split.username else None
    return SMBLocation(split.hostname, port, parts[0], "/".join(parts[1:]), username)


def _smb_password(credential: Credential | None) -> Secret | None:
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return Secret(value, f"env:{PASSWORD_ENV}")
    if credential is None:
        return None
    from orchestrator.secretrefs import resolve

    assert credential.password is not None  # the loader requires it for a share
    return resolve(credential.password, purpose="share password", override_env=PASSWORD_ENV)


def open_share(
    url: str,
    *,
    credential: Credential | None = None,
    require_encryption: bool = False,
    base_dir: Path | None = None,
) -> Share:
    """A ``Share`` for ``url``. Relative local paths are taken from ``base_dir`` (default: cwd).

    For SMB the user is ``KEYFLEET_SHARE_USER``, else the credential's, else the URL's; the
    password is ``KEYFLEET_SHARE_PASSWORD``, else the credential's resolved reference.
    ``credential`` and ``require_encryption`` do not apply to a local or mounted path.
    """
    if not url:
        raise ConfigError("the share URL is empty", key="share.url")
    scheme = _SCHEME.match(url)
    is_unc = url.startswith(("\\\\", "//"))
    if scheme and scheme[1].lower() == "file":
        return LocalShare(Path(unquote(urlsplit(url).path)))
    if scheme and scheme[1].lower() != "smb":
        raise ConfigError(
            f"share {url!r}: unsupported scheme {scheme[1]!r} (use a path or smb://server/share/path)",
            key="share.url",
        )
    if scheme or (is_unc and sys.platform != "win32"):
        location = parse_smb_url(url)
        username = os.environ.get(USER_ENV) or (credential.username if credential else None)
        from orchestrator.share.smb import SMBShare

        return SMBShare(
            location.server,
            location.port,
            location.share,
            location.path,
            username or location.username,
            _smb_password(credential),
            require_encryption,
        )
    path = Path(url).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return LocalShare(path)
