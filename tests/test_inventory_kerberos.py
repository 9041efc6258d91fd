"""Inventory settings for Kerberos: transport negotiate, keytab credentials, domain, kerberos_hostname, realm."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.inventory.loader import load_inventory
from orchestrator.session.kerberos import principal_name
from tests.test_inventory import ONE_HOST, PROD_HEAD, expect_error, write

KRB_HEAD = """\
defaults:
  transport: kerberos
  domain: contoso.com
  credential: {username: 'CONTOSO\\svc', password: env:KEYFLEET_TEST_WINRM}
"""


def test_kerberos_hostname_defaults_to_the_host_in_the_domain(tmp_path: Path) -> None:
    text = KRB_HEAD + (
        "management_groups:\n  G:\n    hosts:\n"
        "      ms01: {role: management_server}\n"
        "      dw01.other.net: {role: dw_management_server}\n"
        "      ms02: {role: management_server, kerberos_hostname: alias.contoso.com, realm: corp.contoso.com}\n"
    )
    inv = load_inventory(write(tmp_path, text))
    assert inv.hosts["ms01"].kerberos_hostname == "ms01.contoso.com"
    assert inv.hosts["dw01.other.net"].kerberos_hostname == "dw01.other.net"  # already a DNS name
    assert inv.hosts["ms02"].kerberos_hostname == "alias.contoso.com"
    assert inv.hosts["ms02"].realm == "CORP.CONTOSO.COM"
    assert inv.hosts["ms01"].realm is None


def test_without_a_domain_the_host_name_is_the_spn_host(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, PROD_HEAD + ONE_HOST))
    assert inv.hosts["ms01"].kerberos_hostname == "ms01"


def test_keytab_replaces_an_inherited_password(tmp_path: Path) -> None:
    host = "      ms01: {role: management_server, credential: {username: svc@CONTOSO.COM, keytab: file:svc.keytab}}\n"
    inv = load_inventory(write(tmp_path, KRB_HEAD + "management_groups:\n  G:\n    hosts:\n" + host))
    credential = inv.hosts["ms01"].credential
    assert credential is not None and credential.password is None
    assert credential.keytab == str(tmp_path / "svc.keytab")


def test_no_password_means_the_users_own_tickets(tmp_path: Path) -> None:
    text = KRB_HEAD.replace(", password: env:KEYFLEET_TEST_WINRM", "") + ONE_HOST
    inv = load_inventory(write(tmp_path, text))
    credential = inv.hosts["ms01"].credential
    assert credential is not None and credential.password is None and credential.keytab is None


def test_negotiate_transport_is_accepted(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, KRB_HEAD.replace("kerberos", "negotiate") + ONE_HOST))
    assert inv.hosts["ms01"].transport == "negotiate"


@pytest.mark.parametrize(
    ("username", "realm", "principal"),
    [
        ("CONTOSO\\svc", "CONTOSO.COM", "svc@CONTOSO.COM"),
        ("svc@contoso.com", None, "svc@CONTOSO.COM"),
        ("svc@CONTOSO.COM", "CORP.CONTOSO.COM", "svc@CORP.CONTOSO.COM"),
        ("CONTOSO\\svc", None, "svc"),  # krb5.conf's default_realm
    ],
)
def test_principal_names(username: str, realm: str | None, principal: str) -> None:
    assert principal_name(username, realm) == principal


BAD = [
    (
        "keytab-not-a-file-reference",
        KRB_HEAD.replace("password: env:KEYFLEET_TEST_WINRM", "keytab: /etc/svc.keytab") + ONE_HOST,
        4,
        "defaults.credential.keytab",
        ["file:PATH"],
    ),
    (
        "password-and-keytab",
        KRB_HEAD.replace("}", ", keytab: file:svc.keytab}") + ONE_HOST,
        4,
        "management_groups.G.hosts.ms01.credential.keytab",  # the line where both stand
        ["a password or a keytab, not both"],
    ),
    (
        "keytab-with-ntlm",
        KRB_HEAD.replace("kerberos", "ntlm").replace("password: env:KEYFLEET_TEST_WINRM", "keytab: file:a.kt")
        + ONE_HOST,
        4,
        "management_groups.G.hosts.ms01.credential.keytab",
        ["transport kerberos or negotiate"],
    ),
    (
        "ntlm-needs-a-password",
        KRB_HEAD.replace("kerberos", "ntlm").replace(", password: env:KEYFLEET_TEST_WINRM", "") + ONE_HOST,
        8,
        "management_groups.G.hosts.ms01",
        ["missing required key 'credential.password'"],
    ),
    ("bad-realm", KRB_HEAD + "  realm: 'CONTOSO COM'\n" + ONE_HOST, 5, "defaults.realm", ["invalid realm"]),
    (
        "bad-kerberos-hostname",
        KRB_HEAD + "  kerberos_hostname: 'a/b'\n" + ONE_HOST,
        5,
        "defaults.kerberos_hostname",
        [],
    ),
    (
        "share-keytab",
        "share:\n  url: smb://srv/share\n  credential: {username: u, keytab: file:x.kt}\n" + KRB_HEAD + ONE_HOST,
        3,
        "share.credential",
        ["{username, password}"],
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "fragments"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_kerberos_settings_are_one_clear_line(
    tmp_path: Path, text: str, line: int | None, key: str | None, fragments: list[str]
) -> None:
    expect_error(tmp_path, text, line, key, *fragments)
