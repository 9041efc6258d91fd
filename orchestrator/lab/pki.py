"""The lab's certificate authority and per-host TLS server certificates, cached in the lab state_dir."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orchestrator.privatefile import write_private

CA_NAME = "keyfleet lab CA"
_CA_DAYS = 3650
_HOST_DAYS = 825
_RENEW_BEFORE = dt.timedelta(days=7)


@dataclass(frozen=True)
class HostCertificate:
    """PEM files of one host's TLS server certificate and key, and the certificate in DER."""

    cert_path: Path
    key_path: Path
    der: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _still_valid(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - _RENEW_BEFORE > now


class LabPKI:
    """A lab CA (``ca.pem``/``ca.key``) and host certificates (``<host>.pem``/``<host>.key``).

    Files live in ``state_dir`` and are reused while valid, so a fleet starts without generating keys.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._ca_cert: x509.Certificate | None = None
        self._ca_key: ec.EllipticCurvePrivateKey | None = None

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def _ca_key_path(self) -> Path:
        return self.state_dir / "ca.key"

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        try:
            cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
            key = serialization.load_pem_private_key(self._ca_key_path.read_bytes(), password=None)
        except (OSError, ValueError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not _still_valid(cert):
            return None
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            return None
        return cert, key

    def ensure_ca(self) -> x509.Certificate:
        """Load the CA from state_dir, or create it (and forget host certificates it did not sign)."""
        if self._ca_cert is not None:
            return self._ca_cert
        self.state_dir.mkdir(parents=True, exist_ok=True)
        loaded = self._load_ca()
        if loaded is None:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            write_private(self._ca_key_path, _key_pem(key))
            write_private(self.ca_path, cert.public_bytes(serialization.Encoding.PEM))
            loaded = cert, key
        self._ca_cert, self._ca_key = loaded
        return loaded[0]

    def _host_valid(self, cert: x509.Certificate, key_pem: bytes, name: str, address: str) -> bool:
        ca = self.ensure_ca()
        try:
            cert.verify_directly_issued_by(ca)
            key = serialization.load_pem_private_key(key_pem, password=None)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        return (
            _still_valid(cert)
            and isinstance(key, ec.EllipticCurvePrivateKey)
            and _public_der(cert.public_key()) == _public_der(key.public_key())
            and ipaddress.ip_address(address) in san.get_values_for_type(x509.IPAddress)
            and name.lower() in (n.lower() for n in san.get_values_for_type(x509.DNSName))
        )

    def host_certificate(self, name: str, address: str) -> HostCertificate:
        """The server certificate of host ``name`` listening on IP ``address`` (SAN: both)."""
        ca = self.ensure_ca()
        assert self._ca_key is not None
        cert_path = self.state_dir / f"{name}.pem"
        key_path = self.state_dir / f"{name}.key"
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if self._host_valid(cert, key_path.read_bytes(), name, address):
                return HostCertificate(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))
        except (OSError, ValueError):
            pass  # missing or unreadable: issue a new one below
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_HOST_DAYS))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(address))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return HostCertificate(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))
