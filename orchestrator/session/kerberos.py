"""Kerberos and Negotiate for WinRM: tickets in a private per-run credential cache, a pyspnego HTTP auth
that pywinrm's transport uses, and Kerberos failures as ``auth`` with a hint.

With a password or a keytab keyfleet gets its own ticket (one AS exchange per credential per run) into a
FILE cache in a private folder that is removed when the process ends; the user's default cache is never
read or written then. Without either, the user's existing tickets are used (``kinit`` on a jump host).
"""

from __future__ import annotations

import atexit
import base64
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import spnego
from cryptography.exceptions import UnsupportedAlgorithm
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.inventory.model import HostConfig
from orchestrator.secret import Secret, mask
from orchestrator.session.transport import authenticate_with

log = logging.getLogger("keyfleet.kerberos")

TRANSPORTS = ("kerberos", "negotiate")
HINT_SKEW = "clock skew"
HINT_SPN = "unknown service principal (check the SPN / kerberos_hostname)"
HINT_PASSWORD = "wrong password or locked account"
HINT_KDC = "KDC unreachable (check krb5.conf / realm)"
# MIT krb5 error codes (krb5/krb5.h, com_err table krb5): Kerberos errors as RFC 4120 numbers them
_ERR_BASE = -1765328384
_HINTS = {
    _ERR_BASE + 7: HINT_SPN,  # KDC_ERR_S_PRINCIPAL_UNKNOWN
    _ERR_BASE + 6: HINT_PASSWORD,  # KDC_ERR_C_PRINCIPAL_UNKNOWN: no such user
    _ERR_BASE + 18: HINT_PASSWORD,  # KDC_ERR_CLIENT_REVOKED: locked or disabled
    _ERR_BASE + 23: HINT_PASSWORD,  # KDC_ERR_KEY_EXPIRED: password expired
    _ERR_BASE + 24: HINT_PASSWORD,  # KDC_ERR_PREAUTH_FAILED
    _ERR_BASE + 31: HINT_PASSWORD,  # KRB_AP_ERR_BAD_INTEGRITY: decrypt failed (old-style wrong password)
    _ERR_BASE + 37: HINT_SKEW,  # KRB_AP_ERR_SKEW
    -1765328228: HINT_KDC,  # KRB5_KDC_UNREACH: cannot contact any KDC for realm
    -1765328230: HINT_KDC,  # KRB5_REALM_CANT_RESOLVE: cannot find KDC for realm
    -1765328160: HINT_KDC,  # KRB5_REALM_UNKNOWN
    -1765328164: HINT_KDC,  # KRB5_CONFIG_NODEFREALM: no default realm
}
INSTALL_HINT = "pip install 'keyfleet[kerberos]' (bash .ci/setup kerberos)"
_CODE_IN_TEXT = re.compile(r"(-?\d{10})")  # krb5 error codes, signed or as unsigned GSS minor codes
_MINOR_TEXT = re.compile(r"Minor \(\d+\): (.*?)(?:, Context:|$)", re.S)


class KerberosError(Exception):
    """A Kerberos logon failed; ``reason`` is safe to show (no secret) and ends with its hint."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def explain(error: BaseException, where: str) -> KerberosError:
    """A KerberosError for a krb5/gssapi/pyspnego failure, with the hint its error code calls for."""
    text = mask(str(error))
    codes = [getattr(error, "err_code", None), getattr(error, "min_code", None)]
    codes.append(getattr(getattr(error, "base_error", None), "min_code", None))
    codes += [int(c) for c in _CODE_IN_TEXT.findall(text)]
    signed = [c - 2**32 if c >= 2**31 else c for c in codes if isinstance(c, int)]  # GSS minor codes are unsigned
    hint = next((_HINTS[c] for c in signed if c in _HINTS), None)
    if hint is None and "clock skew" in text.lower():
        hint = HINT_SKEW
    minor = _MINOR_TEXT.search(text)  # pyspnego: "... Minor (code): what MIT said, Context: ..."
    detail = minor.group(1) if minor else text
    return KerberosError(f"{where}: {_first_line(detail)}" + (f"; hint: {hint}" if hint else ""), hint)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "failed"
    return line[:300]


def principal_name(username: str, realm: str | None) -> str:
    """``DOMAIN\\user`` or ``user`` -> ``user@REALM``; ``user@REALM`` stays (the realm setting wins)."""
    user = username.rpartition("\\")[2]
    if "@" in user:
        user, _, own = user.partition("@")
        return f"{user}@{realm or own.upper()}"
    return f"{user}@{realm}" if realm else user


@dataclass(frozen=True)
class _CacheKey:
    principal: str
    source: str  # what the ticket came from: the password's reference label, or the keytab path


class TicketCaches:
    """The run's private credential caches, one FILE cache per credential; removed at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dictionaries and the folder, never held across a logon
        self._dir: Path | None = None
        self._caches: dict[_CacheKey, str | KerberosError] = {}
        self._logons: dict[_CacheKey, threading.Lock] = {}  # one per credential: its hosts wait for one AS exchange
        self._made = 0

    def ccache(self, host: HostConfig, password: Secret | None) -> str | None:
        """``FILE:path`` of a cache holding a ticket for the host's credential, or None: the user's own tickets.
        Raises KerberosError (the same one for every host of that credential) when the logon fails."""
        credential = host.credential
        if credential is None or (password is None and credential.keytab is None):
            return None
        principal = principal_name(credential.username, host.realm)
        key = _CacheKey(principal, credential.keytab or (password.label if password else ""))
        with self._lock:
            logon = self._logons.setdefault(key, threading.Lock())
        with logon:  # a slow KDC for one credential holds up only the hosts of that credential
            with self._lock:
                known = self._caches.get(key)
                cache = None if known is not None else self._new_cache()
            if cache is not None:
                try:
                    known = self._kinit(principal, password, credential.keytab, cache)
                except KerberosError as exc:
                    known = exc
                with self._lock:
                    self._caches[key] = known
        assert known is not None
        if isinstance(known, KerberosError):
            raise known
        return known

    def _new_cache(self) -> str:
        """A new cache's name in the run's private folder (made on first use); under ``_lock``."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="keyfleet-krb5cc-"))  # 0700, removed at exit
            atexit.register(self.remove)
        self._made += 1
        return f"FILE:{self._dir / f'cc{self._made}'}"

    def _kinit(self, principal: str, password: Secret | None, keytab: str | None, cache: str) -> str:
        import krb5

        try:
            ctx = krb5.init_context()
            princ = krb5.parse_name_flags(ctx, principal.encode())
            opt = krb5.get_init_creds_opt_alloc(ctx)
            if keytab is not None:
                if not os.path.isfile(keytab):
                    raise KerberosError(f"Kerberos logon of {principal}: keytab {keytab} not found")
                creds = krb5.get_init_creds_keytab(ctx, princ, opt, keytab=krb5.kt_resolve(ctx, keytab.encode()))
            else:
                assert password is not None
                creds = krb5.get_init_creds_password(ctx, princ, opt, password=password.reveal().encode())
            ccache = krb5.cc_resolve(ctx, cache.encode())
            krb5.cc_initialize(ctx, ccache, princ)
            krb5.cc_store_cred(ctx, ccache, creds)
        except krb5.Krb5Error as exc:
            raise explain(exc, f"Kerberos logon of {principal}") from None
        return cache

    def remove(self) -> None:
        with self._lock:
            folder, self._dir = self._dir, None
            self._caches.clear()
            self._logons.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


CACHES = TicketCaches()


def tls_server_end_point(cert_der: bytes) -> GssChannelBindings:
    """RFC 5929 channel bindings of a server certificate, hashed with its signature hash (MD5/SHA-1: SHA-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    signature_hash = x509.load_der_x509_certificate(cert_der).signature_hash_algorithm
    names: dict[str, hashes.HashAlgorithm] = {"sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
    algorithm = names.get(signature_hash.name if signature_hash else "", hashes.SHA256())
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


def _cbt(response: requests.Response) -> GssChannelBindings | None:
    """RFC 5929 tls-server-end-point bindings of the HTTPS connection a response came on (None over http).
    None too for a certificate whose signature hash cannot be told (an algorithm cryptography does not
    know, or DER it will not parse): RFC 5929 4.1 leaves its bindings undefined, and requests_ntlm (its
    ``_get_certificate_hash``) then logs on without them, as here; a server that requires them refuses."""
    try:
        sock = response.raw._fp.fp.raw._sock  # type: ignore[union-attr]  # urllib3's socket: the one place requests exposes the peer cert
        der = sock.getpeercert(True)
    except AttributeError:
        return None
    if not der:
        return None
    try:
        return tls_server_end_point(der)
    except (UnsupportedAlgorithm, ValueError) as exc:
        log.debug("no channel bindings: the server's certificate cannot be read (%s)", type(exc).__name__)
        return None


class NegotiateAuth(requests.auth.AuthBase):
    """HTTP Negotiate with a pyspnego context per connection: raw Kerberos (``kerberos``, as pywinrm sends it)
    or SPNEGO (``negotiate``); mutual authentication required; the wrap/unwrap pywinrm's Encryption calls."""

    def __init__(self, protocol: str, credentials: list[Any] | None, hostname: str) -> None:
        self.protocol = protocol
        self.credentials = credentials
        self._hostname = hostname
        self._context: Any = None

    @property
    def negotiated(self) -> str | None:
        """kerberos or ntlm once the logon is done."""
        if self._context is None or not self._context.complete:
            return None
        return str(self._context.negotiated_protocol or self.protocol)

    def forget(self) -> None:
        """Drop the context before a new connection logs on (transport.forget_logon)."""
        self._context = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.register_hook("response", self._on_response)  # type: ignore[no-untyped-call]
        return request

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401 or "negotiate" not in response.headers.get("www-authenticate", "").lower():
            return response
        where = f"Kerberos logon to HTTP/{self._hostname}"
        try:
            self._context = spnego.client(
                self.credentials,
                hostname=self._hostname,
                service="HTTP",
                channel_bindings=_cbt(response),
                protocol=self.protocol,
                options=spnego.NegotiateOptions.wrapping_winrm,
            )
            token = self._context.step()
            for _ in range(4):  # Kerberos needs one round trip, NTLM inside SPNEGO two
                response.content  # noqa: B018  # read the body so the connection can be reused
                response.raw.release_conn()
                retry = response.request.copy()
                retry.headers["Authorization"] = "Negotiate " + base64.b64encode(token or b"").decode()
                response = response.connection.send(retry, **kwargs)
                answer = _server_token(response)
                if response.status_code == 401 and not answer:
                    return response  # refused: pywinrm reports the 401
                if answer:
                    token = self._context.step(answer)
                if response.status_code != 401:
                    break
        except SpnegoError as exc:
            raise explain(exc, where) from None
        if not self._context.complete:
            raise KerberosError(f"{where}: the server did not prove its identity (mutual authentication)")
        return response

    def wrap_winrm(self, host: str, message: bytes) -> tuple[bytes, bytes]:
        wrapped = self._context.wrap_winrm(message)
        return wrapped.data, wrapped.header

    def unwrap_winrm(self, host: str, message: bytes, header: bytes) -> bytes:
        return bytes(self._context.unwrap_winrm(header, message))


def _server_token(response: requests.Response) -> bytes | None:
    for value in response.headers.get("www-authenticate", "").split(","):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() in ("negotiate", "kerberos") and token.strip():
            try:
                return base64.b64decode(token.strip())
            except ValueError:
                return None
    return None


def credentials_for(host: HostConfig, password: Secret | None) -> list[Any] | None:
    """What the pyspnego context logs on with: the private cache, plus the password for NTLM inside SPNEGO;
    None: the user's own tickets."""
    creds: list[Any] = []
    try:
        cache = CACHES.ccache(host, password)
    except KerberosError as exc:
        # Negotiate falls back to NTLM only when Kerberos is unavailable (no KDC), as Windows clients do;
        # a refused logon (wrong password, clock skew) stays a failure
        if host.transport != "negotiate" or password is None or exc.hint != HINT_KDC:
            raise
        cache = None
    if cache is not None and host.credential is not None:
        principal = principal_name(host.credential.username, host.realm)
        creds.append(spnego.KerberosCCache(ccache=cache, principal=principal))
    if host.transport == "negotiate" and password is not None and host.credential is not None:
        creds.append(spnego.Password(host.credential.username, password.reveal()))
    return creds or None


def missing_bindings() -> str | None:
    """Which MIT Kerberos binding (gssapi, krb5) is not installed, or None."""
    return next((name for name in ("gssapi", "krb5") if importlib.util.find_spec(name) is None), None)


def attach(transport: Any, host: HostConfig, password: Secret | None) -> NegotiateAuth:
    """Make a pywinrm Transport authenticate with NegotiateAuth. Its session is built on the first send (so
    the logon runs under the caller's deadline and error handling); over http it then sets up encryption."""
    missing = missing_bindings()
    if missing is not None:
        raise HostFailure(
            ErrorKind.CONFIG, host.name, f"transport {host.transport} needs the {missing} module: {INSTALL_HINT}"
        )
    auth = NegotiateAuth(host.transport, None, host.kerberos_hostname)

    def logon() -> None:
        auth.credentials = credentials_for(host, password)

    authenticate_with(transport, auth, before_logon=logon, encrypt=host.scheme == "http")
    return auth
