"""Inventory loading: the checked-in inventories, defaults and inheritance, and every bad input
as one ConfigError line naming file, line and key (also through the CLI: exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Credential, Role, SecretRef
from orchestrator.inventory.schema import SETTINGS, settings_reference_markdown
from orchestrator.lab.config import lab_config

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "inventories" / "lab.yml"
PRODUCTION = REPO / "inventories" / "example-production.yml"

PROD_HEAD = """\
defaults:
  credential: {username: 'CONTOSO\\svc', password: env:KEYFLEET_TEST_WINRM}
"""
LAB_HEAD = """\
lab: {serve: false, state_dir: state, seed: 3}
defaults:
  credential: {username: 'LAB\\kf', password: lab-pass-1234}
"""


def password_of(credential: Credential | None) -> SecretRef:
    assert credential is not None and credential.password is not None
    return credential.password


def write(tmp_path: Path, text: str, name: str = "inv.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "certs").mkdir(exist_ok=True)
    for pem in ("ca.pem", "client.pem", "client.key"):  # files the inventories here may point at
        (tmp_path / "certs" / pem).write_text("stand-in PEM\n")
    return path


def load_text(tmp_path: Path, text: str) -> object:
    return load_inventory(write(tmp_path, text))


def expect_error(tmp_path: Path, text: str, line: int | None, key: str | None, *fragments: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert error.file == str(path)
    assert error.line == line, message
    assert error.key == key, message
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(where + (f"{key}: " if key else "")), message
    for fragment in fragments:
        assert fragment in message, message
    return error


# -- the checked-in inventories ------------------------------------------------------------------


def test_lab_inventory_loads() -> None:
    inv = load_inventory(LAB)
    assert len(inv.hosts) >= 12 and len(inv.groups) >= 2
    assert {h.role for h in inv.hosts.values()} == set(Role)
    assert inv.lab is not None and lab_config(inv).state_dir == LAB.parent / "lab-state"
    assert inv.share is not None and inv.share.url == str(LAB.parent / "lab-share")
    modes = {(h.scheme, h.transport, h.port) for h in inv.hosts.values()}
    assert {("http", "ntlm", 5985), ("https", "basic", 5986), ("https", "ntlm", 5986)} <= modes
    for host in inv.hosts.values():
        assert host.address.startswith("127.0.10.")
        assert host.lab is not None
        assert host.credential is not None and host.credential.password is not None
        assert host.credential.password.scheme == "plain"
        if host.scheme == "https":
            assert host.ca_bundle == str(LAB.parent / "lab-state" / "ca.pem")
    assert inv.backup.password is not None and inv.backup.password.scheme == "plain"
    assert inv.signing is not None and inv.signing.private_key is not None
    assert len({h.address for h in inv.hosts.values()}) == len(inv.hosts)


def test_lab_signing_key_pair_matches() -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    inv = load_inventory(LAB)
    assert inv.signing is not None and inv.signing.private_key is not None
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(inv.signing.private_key.target))
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64encode(public).decode() == inv.signing.public_key


def test_production_example_loads_without_its_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYFLEET_"):
            monkeypatch.delenv(name)
    # the example's CA file lives on a controller, not here: point it at a stand-in beside a copy
    ca = tmp_path / "root-ca.pem"
    ca.write_text("stand-in CA\n")
    text = PRODUCTION.read_text(encoding="utf-8").replace("/etc/pki/contoso/root-ca.pem", str(ca))
    inv = load_inventory(write(tmp_path, text, "example-production.yml"))
    assert inv.lab is None
    schemes = {h.credential.password.scheme for h in inv.hosts.values() if h.credential and h.credential.password}
    assert schemes <= {"env", "file", "prompt", "command", "vault"}
    kerberos = inv.hosts["euscsm-ms01"]  # a Kerberos-only group: keytab, domain
    assert kerberos.credential is not None and kerberos.credential.keytab == "/etc/keyfleet/svc-keyfleet.keytab"
    assert (kerberos.transport, kerberos.kerberos_hostname) == ("kerberos", "euscsm-ms01.eu.contoso.com")
    assert all(h.lab is None for h in inv.hosts.values())
    pinned = inv.hosts["scsm-ms02.contoso.com"]
    assert pinned.cert_thumbprint == "3f1a9b220c4d5e6f708192a3b4c5d6e7f8091a2b"
    assert inv.backup.password is not None and inv.backup.password.scheme == "vault"
    assert inv.backup.password.target.startswith(str(tmp_path / "secrets"))


# -- defaults, inheritance, normalisation --------------------------------------------------------


def test_defaults_group_host_inheritance(tmp_path: Path) -> None:
    inv = load_inventory(
        write(
            tmp_path,
            PROD_HEAD
            + """\
  tool_timeout: 5m
  retries: 4
  scheme: https
management_groups:
  G1:
    tool_timeout: 90
    credential: {password: env:G1_PASS}
    hosts:
      ms01: {role: management_server}
      ms02: {role: management_server, tool_timeout: 45s, scheme: http, port: 15985}
      dw01: {role: dw_management_server, address: dw01.example.org, cert_thumbprint: "AB:CD EF"}
""".replace('"AB:CD EF"', '"' + "AB:" * 19 + 'CD"'),
        )
    )
    ms01, ms02, dw01 = inv.hosts.values()
    assert ms01.tool_timeout == 90 and ms02.tool_timeout == 45 and ms01.retries == 4
    assert ms01.port == 5986 and ms01.scheme == "https" and ms02.port == 15985
    assert ms01.credential is not None and ms01.credential.username == "CONTOSO\\svc"
    assert password_of(ms01.credential).target == "G1_PASS"  # credential mappings merge key by key
    assert dw01.address == "dw01.example.org" and ms01.address == "ms01"
    assert dw01.cert_thumbprint == "ab" * 19 + "cd"
    assert ms01.connect_timeout == 10 and ms01.operation_timeout == 20 and ms01.host_timeout == 300
    assert ms01.cert_validation is True and ms01.allow_insecure is False and ms01.lab is None
    assert inv.backup.password is None and inv.backup.max_age.days == 30
    assert inv.groups["G1"].hosts == ("ms01", "ms02", "dw01")
    assert ms01.location.line == 11 and ms01.location.key == "management_groups.G1.hosts.ms01"


def test_durations_and_anchors_and_merge_keys(tmp_path: Path) -> None:
    inv = load_inventory(
        write(
            tmp_path,
            PROD_HEAD
            + """\
backup: {password_id: p1, max_age: 12h}
x-common: &common
  role: management_server
  tool_timeout: 0.5
management_groups:
  G1:
    hosts:
      ms01:
        <<: *common
        host_timeout: 1d
      ms02: {<<: *common, role: dw_management_server, connect_timeout: 90m}
""",
        )
    )
    assert inv.backup.max_age.total_seconds() == 12 * 3600
    ms01, ms02 = inv.hosts.values()
    assert ms01.role is Role.MANAGEMENT_SERVER and ms01.host_timeout == 86400 and ms01.tool_timeout == 0.5
    assert ms02.role is Role.DW_MANAGEMENT_SERVER and ms02.connect_timeout == 5400


def test_paths_resolve_against_the_inventory_folder(tmp_path: Path) -> None:
    inv = load_inventory(
        write(
            tmp_path,
            LAB_HEAD
            + """\
  scheme: https
  transport: basic
share: {url: backups}
management_groups:
  G1:
    hosts:
      ms01: {role: management_server, address: 127.0.0.1, ca_bundle: lab}
      ms02: {role: management_server, address: 127.0.0.2, ca_bundle: certs/ca.pem}
      ms03: {role: management_server, address: 127.0.0.3, credential: {password: file:secrets/pw}}
      ms04: {role: management_server, address: 127.0.0.4, credential: {password: vault:v.yml#a.b}}
""",
        )
    )
    assert not (tmp_path / "state" / "ca.pem").exists()  # the lab CA is written when the lab starts
    assert inv.lab is not None and lab_config(inv).state_dir == tmp_path / "state" and lab_config(inv).seed == 3
    assert inv.share is not None and inv.share.url == str(tmp_path / "backups")
    hosts = inv.hosts
    assert hosts["ms01"].ca_bundle == str(tmp_path / "state" / "ca.pem")
    assert hosts["ms02"].ca_bundle == str(tmp_path / "certs" / "ca.pem")
    assert hosts["ms03"].credential is not None
    assert password_of(hosts["ms03"].credential).target == str(tmp_path / "secrets" / "pw")
    assert hosts["ms04"].credential is not None
    assert password_of(hosts["ms04"].credential).target == f"{tmp_path / 'v.yml'}#a.b"


@pytest.mark.parametrize("url", ["smb://files01/keys", "smb://files01:4445/keys/scsm", "\\\\files01\\keys\\scsm"])
def test_smb_share_urls_are_kept(tmp_path: Path, url: str) -> None:
    inv = load_inventory(
        write(
            tmp_path,
            PROD_HEAD
            + f"""\
share:
  url: '{url}'
  credential: {{username: backup, password: env:SHARE_PW}}
management_groups: {{G: {{hosts: {{ms01: {{role: management_server}}}}}}}}
""",
        )
    )
    assert inv.share is not None and inv.share.url == url
    assert inv.share.credential is not None and password_of(inv.share.credential).describe() == "env:SHARE_PW"


def test_allow_insecure_permits_basic_over_http(tmp_path: Path) -> None:
    inv = load_inventory(
        write(
            tmp_path,
            PROD_HEAD
            + """\
management_groups:
  G:
    hosts:
      ms01: {role: management_server, transport: basic, allow_insecure: true}
""",
        )
    )
    assert inv.hosts["ms01"].allow_insecure and inv.hosts["ms01"].endpoint == "http://ms01:5985/wsman"


def test_settings_reference_covers_the_schema() -> None:
    text = settings_reference_markdown()
    for setting in SETTINGS:
        assert f"{setting.name}`" in text
    assert "| `role` |" in text and "management_server" in text and "| `share.url` |" in text


# -- bad input: one line, file:line: key: message ------------------------------------------------

ONE_HOST = "management_groups:\n  G:\n    hosts:\n      ms01: {role: management_server}\n"
LOOPBACK_HOST = ONE_HOST.replace("}", ", address: 127.0.0.9}")

BAD_CASES = [
    # (name, text, line, key, fragments)
    ("syntax", PROD_HEAD + "management_groups:\n  G: [a, b\n", 5, None, ["YAML syntax error"]),
    (
        "python-tag",
        PROD_HEAD + "management_groups: !!python/object:os.system {}\n",
        3,
        None,
        ["!!python/object:os.system", "not allowed"],
    ),
    (
        "custom-tag",
        PROD_HEAD + ONE_HOST.replace("management_server}", "!vault management_server}"),
        6,
        None,
        ["!vault", "not allowed"],
    ),
    ("binary-tag", PROD_HEAD + "share: {url: !!binary aGVsbG8=}\n" + ONE_HOST, 3, None, ["!!binary"]),
    ("unknown-top-key", PROD_HEAD + "sahre: {url: x}\n" + ONE_HOST, 3, "sahre", ["did you mean 'share'"]),
    (
        "unknown-host-key",
        PROD_HEAD + ONE_HOST.replace("}", ", trasnport: ntlm}"),
        6,
        "management_groups.G.hosts.ms01.trasnport",
        ["unknown key 'trasnport'", "did you mean 'transport'"],
    ),
    (
        "key-in-wrong-scope",
        PROD_HEAD + ONE_HOST.replace("}", ", description: x}"),
        6,
        "management_groups.G.hosts.ms01.description",
        ["belongs in: group"],
    ),
    (
        "operation-timeout-above-max-timeoutms",
        PROD_HEAD + ONE_HOST.replace("}", ", operation_timeout: 90s}"),
        6,
        "management_groups.G.hosts.ms01.operation_timeout",
        ["90s is above 60s, Windows' default MaxTimeoutms"],
    ),
    (
        "unknown-role",
        PROD_HEAD + ONE_HOST.replace("management_server", "managment_server"),
        6,
        "management_groups.G.hosts.ms01.role",
        ["unknown role 'managment_server'", "management_server, dw_management_server, self_service_portal"],
    ),
    (
        "duplicate-host",
        PROD_HEAD + ONE_HOST + "  H:\n    hosts:\n      MS01: {role: management_server}\n",
        9,
        "management_groups.H.hosts.MS01",
        ["duplicate host 'MS01'", "group 'G' at line 6"],
    ),
    (
        "duplicate-yaml-key",
        PROD_HEAD + ONE_HOST + "      ms01: {role: management_server}\n",
        7,
        "management_groups.G.hosts.ms01",
        ["duplicate key 'ms01'", "line 6"],
    ),
    (
        "host-underscore",
        PROD_HEAD + ONE_HOST.replace("ms01", "ms_01"),
        6,
        "management_groups.G.hosts.ms_01",
        ["invalid host name", "not a DNS name"],
    ),
    (
        "host-netbios",
        PROD_HEAD + ONE_HOST.replace("ms01", "scsm-management01"),
        6,
        "management_groups.G.hosts.scsm-management01",
        ["longer than 15", "NetBIOS"],
    ),
    (
        "host-hyphen",
        PROD_HEAD + ONE_HOST.replace("ms01", "ms01-.example.org"),
        6,
        "management_groups.G.hosts.ms01-.example.org",
        ["not a DNS name"],
    ),
    (
        "host-label-63",
        PROD_HEAD + ONE_HOST.replace("ms01", "ms01." + "a" * 64 + ".org"),
        6,
        f"management_groups.G.hosts.ms01.{'a' * 64}.org",
        ["longer than 63"],
    ),
    (
        "host-total-253",
        PROD_HEAD + ONE_HOST.replace("ms01", "ms01" + ".abcdefghij" * 23),
        6,
        "management_groups.G.hosts.ms01" + ".abcdefghij" * 23,
        ["at most 253"],
    ),
    (
        "host-separator",
        PROD_HEAD + ONE_HOST.replace("ms01", "'..\\ms01'"),
        6,
        "management_groups.G.hosts...\\ms01",
        ["invalid host name"],
    ),
    (
        "group-dotdot",
        PROD_HEAD + ONE_HOST.replace("  G:", "  '..':"),
        4,
        "management_groups...",
        ["not a safe folder name"],
    ),
    (
        "group-separator",
        PROD_HEAD + ONE_HOST.replace("  G:", "  a/b:"),
        4,
        "management_groups.a/b",
        ["not a valid management group name"],
    ),
    (
        "group-drive",
        PROD_HEAD + ONE_HOST.replace("  G:", "  'C:':"),
        4,
        "management_groups.C:",
        ["not a valid management group name"],
    ),
    (
        "wrong-type-port",
        PROD_HEAD + ONE_HOST.replace("}", ", port: http}"),
        6,
        "management_groups.G.hosts.ms01.port",
        ["expected an integer, got a string"],
    ),
    (
        "wrong-type-bool",
        PROD_HEAD + "  cert_validation: 1\n" + ONE_HOST,
        3,
        "defaults.cert_validation",
        ["expected a boolean"],
    ),
    (
        "wrong-type-hosts",
        PROD_HEAD + "management_groups:\n  G:\n    hosts: [ms01, ms02]\n",
        5,
        "management_groups.G.hosts",
        ["expected a mapping, got a list"],
    ),
    ("wrong-type-root", "- a\n- b\n", 1, None, ["expected a mapping, got a list"]),
    (
        "port-range",
        PROD_HEAD + ONE_HOST.replace("}", ", port: 70000}"),
        6,
        "management_groups.G.hosts.ms01.port",
        ["outside 1-65535"],
    ),
    (
        "missing-role",
        PROD_HEAD + ONE_HOST.replace("{role: management_server}", "{address: 10.0.0.1}"),
        6,
        "management_groups.G.hosts.ms01",
        ["missing required key 'role'", "dw_management_server"],
    ),
    (
        "missing-hosts",
        PROD_HEAD + "management_groups:\n  G: {description: x}\n",
        4,
        "management_groups.G",
        ["missing required key 'hosts'"],
    ),
    ("missing-groups", PROD_HEAD, 1, None, ["missing required key 'management_groups'"]),
    (
        "missing-username",
        "defaults:\n  credential: {password: env:X}\n" + ONE_HOST,
        2,
        "management_groups.G.hosts.ms01.credential",
        ["missing required key 'username'"],
    ),
    ("missing-credential", ONE_HOST, 4, "management_groups.G.hosts.ms01", ["missing required key 'credential'"]),
    ("empty-file", "", None, None, ["empty inventory"]),
    ("only-comments", "# nothing here\n", None, None, ["empty inventory"]),
    ("empty-mapping", "{}\n", 1, None, ["empty inventory"]),
    ("no-hosts", PROD_HEAD + "management_groups:\n  G:\n    hosts: {}\n", 4, "management_groups", ["no hosts"]),
    (
        "bad-duration",
        PROD_HEAD + "  host_timeout: 10x\n" + ONE_HOST,
        3,
        "defaults.host_timeout",
        ["30d, 12h, 90m, 45s"],
    ),
    ("negative-duration", PROD_HEAD + "  tool_timeout: -5\n" + ONE_HOST, 3, "defaults.tool_timeout", ["0s or more"]),
    (
        "zero-timeout",
        PROD_HEAD + "  connect_timeout: 0s\n" + ONE_HOST,
        3,
        "defaults.connect_timeout",
        ["greater than 0s"],
    ),
    (
        "huge-duration",
        PROD_HEAD + "backup: {max_age: 86400000000000}\n" + ONE_HOST,
        3,
        "backup.max_age",
        ["at most 3650d"],
    ),
    ("bool-duration", PROD_HEAD + "backup: {max_age: true}\n" + ONE_HOST, 3, "backup.max_age", ["duration"]),
    (
        "basic-over-http",
        PROD_HEAD + ONE_HOST.replace("}", ", transport: basic}"),
        6,
        "management_groups.G.hosts.ms01.transport",
        ["basic over plain http", "allow_insecure: true"],
    ),
    (
        "certificate-over-http",
        PROD_HEAD + ONE_HOST.replace("}", ", transport: certificate}"),
        6,
        "management_groups.G.hosts.ms01.transport",
        ["certificate over plain http"],
    ),
    (
        "certificate-needs-cert",
        PROD_HEAD + ONE_HOST.replace("}", ", transport: certificate, scheme: https}"),
        6,
        "management_groups.G.hosts.ms01",
        ["missing required key 'client_cert'"],
    ),
    (
        "unknown-transport",
        PROD_HEAD + "  transport: kerberoes\n" + ONE_HOST,
        3,
        "defaults.transport",
        ["did you mean 'kerberos'", "ntlm, kerberos, negotiate, credssp, basic, certificate"],
    ),
    (
        "bad-thumbprint",
        PROD_HEAD + ONE_HOST.replace("}", ", cert_thumbprint: 'abc'}"),
        6,
        "management_groups.G.hosts.ms01.cert_thumbprint",
        ["40 hex digits", "64 hex digits"],
    ),
    (
        "ca-bundle-lab-outside-lab",
        PROD_HEAD + "  ca_bundle: lab\n" + ONE_HOST,
        3,
        "management_groups.G.hosts.ms01.ca_bundle",
        ["lab inventories only"],
    ),
    (
        "plaintext-in-production",
        "defaults:\n  credential: {username: u, password: Sup3rS3cret-Value}\n" + ONE_HOST,
        2,
        "defaults.credential.password",
        ["plaintext secret in a production inventory"],
    ),
    (
        "plaintext-backup",
        PROD_HEAD + "backup: {password: Sup3rS3cret-Value}\n" + ONE_HOST,
        3,
        "backup.password",
        ["use env:, file:, prompt, command: or vault:"],
    ),
    (
        "plaintext-lab-remote-host",
        LAB_HEAD + ONE_HOST.replace("}", ", address: 10.20.1.11}"),
        3,
        "defaults.credential.password",
        [
            "plaintext secret",
            "host ms01 (10.20.1.11) is not on loopback",
            "use env:, file:, prompt, command: or vault:",
        ],
    ),
    (
        "plaintext-lab-host-name",
        LAB_HEAD + ONE_HOST,
        3,
        "defaults.credential.password",
        ["host ms01 is not on loopback (127.0.0.0/8)"],
    ),
    (
        "plaintext-lab-first-secret-named",
        "lab: {serve: false}\ndefaults:\n  credential: {username: u, password: env:W}\n"
        "backup: {password: Lab-Backup-9}\n"
        + LOOPBACK_HOST
        + "      ms02: {role: management_server, address: scsm-ms02.contoso.com}\n"
        + "      ms03: {role: management_server, address: 10.0.0.3}\n",
        4,
        "backup.password",
        ["host ms02 (scsm-ms02.contoso.com) (and 1 more) is not on loopback"],
    ),
    (
        "plaintext-lab-remote-share",
        LAB_HEAD
        + "share: {url: 'smb://files01.contoso.com/keys', credential: {username: b, password: env:S}}\n"
        + LOOPBACK_HOST,
        3,
        "defaults.credential.password",
        ["share server files01.contoso.com is not on loopback"],
    ),
    (
        "plaintext-lab-remote-unc-share",
        LAB_HEAD + "share: {url: '\\\\10.1.1.1\\keys'}\n" + LOOPBACK_HOST,
        3,
        "defaults.credential.password",
        ["share server 10.1.1.1 is not on loopback"],
    ),
    (
        "ca-bundle-missing",
        PROD_HEAD + "  ca_bundle: certs/nope.pem\n" + ONE_HOST,
        3,
        "defaults.ca_bundle",
        ["certs/nope.pem does not exist", "relative paths start at the inventory's folder"],
    ),
    (
        "ca-bundle-folder",
        PROD_HEAD + ONE_HOST.replace("}", ", ca_bundle: certs}"),
        6,
        "management_groups.G.hosts.ms01.ca_bundle",
        ["certs is not a file"],
    ),
    (
        "client-key-missing",
        PROD_HEAD
        + ONE_HOST.replace(
            "}",
            ", scheme: https, transport: certificate, client_cert: certs/client.pem, client_key: /nonexistent/c.key}",
        ),
        6,
        "management_groups.G.hosts.ms01.client_key",
        ["file /nonexistent/c.key does not exist"],
    ),
    (
        "client-cert-missing-in-lab",
        LAB_HEAD + "  client_cert: missing.pem\n" + LOOPBACK_HOST,
        4,
        "defaults.client_cert",
        ["missing.pem does not exist"],
    ),
    (
        "secret-not-string",
        PROD_HEAD + "backup: {password: 12345678}\n" + ONE_HOST,
        3,
        "backup.password",
        ["expected a string", "got an integer"],
    ),
    (
        "bad-env-ref",
        PROD_HEAD + "backup: {password: 'env:BAD-NAME'}\n" + ONE_HOST,
        3,
        "backup.password",
        ["env: needs an environment variable name"],
    ),
    (
        "bad-vault-ref",
        PROD_HEAD + "backup: {password: 'vault:secrets.yml'}\n" + ONE_HOST,
        3,
        "backup.password",
        ["FILE#key"],
    ),
    (
        "bad-command-ref",
        PROD_HEAD + 'backup: {password: "command:pass show \'x"}\n' + ONE_HOST,
        3,
        "backup.password",
        ["cannot be split"],
    ),
    (
        "bad-public-key",
        PROD_HEAD + "signing: {public_key: not-a-key}\n" + ONE_HOST,
        3,
        "signing.public_key",
        ["Ed25519 public key"],
    ),
    (
        "smb-without-share",
        PROD_HEAD + "share: {url: 'smb://server'}\n" + ONE_HOST,
        3,
        "share.url",
        ["smb://server[:port]/share"],
    ),
    (
        "share-credential-local",
        PROD_HEAD + "share: {url: /srv/keys, credential: {username: u, password: env:P}}\n" + ONE_HOST,
        3,
        "share.credential",
        ["only with smb://"],
    ),
    (
        "ipv6-address",
        PROD_HEAD + ONE_HOST.replace("}", ", address: '::1'}"),
        6,
        "management_groups.G.hosts.ms01.address",
        ["IPv6"],
    ),
    (
        "lab-fault",
        LAB_HEAD + ONE_HOST.replace("}", ", lab: {faults: [latency:slow]}}"),
        7,
        "management_groups.G.hosts.ms01.lab.faults",
        ["latency needs seconds"],
    ),
    ("bad-date", PROD_HEAD + "backup: {password_id: 2026-13-45}\n" + ONE_HOST, 3, "backup.password_id", ["invalid"]),
    (
        "int-key",
        PROD_HEAD + "management_groups:\n  G:\n    hosts:\n      12345: {role: management_server}\n",
        6,
        "management_groups.G.hosts",
        ["keys must be strings"],
    ),
    (
        "self-merge",
        PROD_HEAD + ONE_HOST.replace("ms01: {role: management_server}", "ms01: &m {<<: *m}"),
        6,
        "management_groups.G.hosts.ms01",
        ["YAML merge (<<) includes itself"],
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragments"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, text: str, line: int | None, key: str | None, fragments: list[str]
) -> None:
    expect_error(tmp_path, text, line, key, *fragments)


def test_plaintext_never_in_error_messages(tmp_path: Path) -> None:
    secret = "Zq9-unique-Secret-771"
    for text in (
        f"defaults:\n  credential: {{username: u, password: {secret}}}\n" + ONE_HOST,
        f'defaults:\n  credential: {{username: u, password: "{secret}\n' + ONE_HOST,  # unterminated
        f"backup: {{password: '{secret}', password_id: 7}}\n" + ONE_HOST,
        f"lab: {{serve: false}}\nbackup: {{password: '{secret}'}}\n" + ONE_HOST.replace("}", ", address: 10.0.0.1}"),
    ):
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_inventory(path)
        assert secret not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the inventory"):
        load_inventory(tmp_path / "nope.yml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "inv.yml"
    path.write_bytes(b"management_groups: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 19\); save it as UTF-8"):
        load_inventory(path)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-8"])
def test_inventory_with_a_bom_is_read(tmp_path: Path, encoding: str) -> None:
    """PowerShell 5.1's ``>`` writes UTF-16LE with a BOM: such an inventory is read as it is."""
    text = "\ufeff" + (LAB_HEAD + LOOPBACK_HOST).replace("\n", "\r\n")
    path = tmp_path / "inv.yml"
    path.write_bytes(text.encode(encoding))
    assert load_inventory(path).hosts


def test_utf16_without_a_bom_is_named(tmp_path: Path) -> None:
    path = tmp_path / "inv.yml"
    path.write_bytes((LAB_HEAD + LOOPBACK_HOST).encode("utf-16-le"))
    with pytest.raises(ConfigError, match=r"inv\.yml: UTF-16 text without a byte order mark; save it as UTF-8"):
        load_inventory(path)


def test_plaintext_allowed_in_lab(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, LAB_HEAD + "backup: {password: 'hunter2:pass'}\n" + LOOPBACK_HOST))
    assert inv.backup.password is not None and inv.backup.password.scheme == "plain"
    assert "hunter2" not in repr(inv.backup.password) and inv.backup.password.describe() == "plain (lab)"


@pytest.mark.parametrize("url", ["smb://127.0.0.1:4445/keys", "smb://backup@127.0.0.1/keys/x", "\\\\127.0.0.2\\keys"])
def test_plaintext_allowed_in_lab_with_a_loopback_smb_share(tmp_path: Path, url: str) -> None:
    share = f"share: {{url: '{url}', credential: {{username: b, password: Lab-Share-Pw-1}}}}\n"
    inv = load_inventory(write(tmp_path, LAB_HEAD + share + LOOPBACK_HOST))
    assert inv.share is not None and inv.share.credential is not None
    assert password_of(inv.share.credential).scheme == "plain"


def test_lab_with_remote_hosts_loads_when_every_secret_is_a_reference(tmp_path: Path) -> None:
    text = "lab: {serve: false}\n" + PROD_HEAD + ONE_HOST.replace("}", ", address: 10.20.1.11}")
    inv = load_inventory(write(tmp_path, text))
    assert inv.lab is not None and inv.hosts["ms01"].address == "10.20.1.11"


def test_certificate_transport_files_resolve_and_exist(tmp_path: Path) -> None:
    host = "{role: management_server, scheme: https, transport: certificate, client_cert: certs/client.pem, "
    host += "client_key: certs/client.key, ca_bundle: certs/ca.pem}"
    inv = load_inventory(write(tmp_path, PROD_HEAD + ONE_HOST.replace("{role: management_server}", host)))
    ms01 = inv.hosts["ms01"]
    assert ms01.client_cert == str(tmp_path / "certs" / "client.pem")
    assert ms01.client_key == str(tmp_path / "certs" / "client.key")
    assert ms01.ca_bundle == str(tmp_path / "certs" / "ca.pem")


def test_schema_reexports_its_parts() -> None:
    from orchestrator.inventory import reference, schema, settings, values

    assert schema.parse_duration is values.parse_duration and schema.Invalid is values.Invalid
    assert schema.check_dns_name is values.check_dns_name and schema.MAX_DURATION == values.MAX_DURATION
    assert schema.SETTINGS is settings.SETTINGS and schema.settings_for is settings.settings_for
    assert schema.Kind is settings.Kind and schema.Scope is settings.Scope and schema.ROLES is settings.ROLES
    assert schema.settings_reference_markdown is reference.settings_reference_markdown
    assert all(hasattr(schema, name) for name in schema.__all__)


def test_yaml_errors_name_the_kind_of_document(tmp_path: Path) -> None:
    from orchestrator.inventory.yamlnodes import YamlDocument

    with pytest.raises(ConfigError, match="cannot read the playbook"):
        YamlDocument(tmp_path / "nope.yml", "nope.yml", document="playbook")
    path = write(tmp_path, "steps: !!python/object:os.system {}\n", "play.yml")
    with pytest.raises(ConfigError, match="the playbook is plain data") as info:
        YamlDocument(path, str(path), document="playbook")
    assert "inventory" not in str(info.value)
    with pytest.raises(ConfigError, match="the inventory is plain data"):
        YamlDocument(path, str(path))
    with pytest.raises(ConfigError, match="cannot read the inventory"):
        YamlDocument(tmp_path / "nope.yml", "nope.yml")


# -- the command --------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


@pytest.mark.parametrize(
    "case",
    [
        "unknown-role",
        "python-tag",
        "syntax",
        "plaintext-in-production",
        "plaintext-lab-remote-host",
        "ca-bundle-missing",
    ],
)
def test_cli_bad_inventory_exit_2_one_line(tmp_path: Path, case: str) -> None:
    _, text, line, key, _ = next(c for c in BAD_CASES if c[0] == case)
    path = write(tmp_path, text)
    result = cli("inventory", "-i", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"keyfleet: {path}:{line}: " + (f"{key}: " if key else ""))
    assert "Sup3rS3cret" not in result.stderr and "lab-pass-1234" not in result.stderr


def test_cli_bad_limit_exit_2() -> None:
    result = cli("inventory", "-i", str(LAB), "--limit", "nosuchhost*")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--limit" in result.stderr


def test_cli_table_and_json() -> None:
    table = cli("inventory", "-i", str(LAB))
    assert table.returncode == 0, table.stderr
    assert "scsm-ms01" in table.stdout and "http://127.0.10.1:5985/wsman" in table.stdout
    assert "plain (lab)" in table.stdout and "Lab-R3WR1PS1" not in table.stdout + table.stderr
    result = cli("inventory", "-i", str(LAB), "--json", "--limit", "role:dw_management_server")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["selected"] == len(document["hosts"]) == 3 and document["total"] >= 12
    host = document["hosts"][0]
    assert host["role"] == "dw_management_server" and host["credential"]["password"] == "plain (lab)"
    assert host["endpoint"].endswith("/wsman") and isinstance(host["tool_timeout"], float)
    assert document["backup"]["password"] == "plain (lab)"
    for secret in ("Lab-R3WR1PS1", "lab-backup-Qc7w", "WWN8g2cNQuG3"):
        assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("extension", ["x-bad-date: 2026-13-45", "x-bad-key: {[1, 2]: x}"])
def test_extension_keys_are_still_plain_data(tmp_path: Path, extension: str) -> None:
    with pytest.raises(ConfigError):
        load_inventory(write(tmp_path, PROD_HEAD + extension + "\n" + ONE_HOST))


def test_control_characters_in_keys_stay_on_one_line(tmp_path: Path) -> None:
    error = expect_error(tmp_path, PROD_HEAD + '"bad\\nkey": 1\n' + ONE_HOST, 3, "bad\\nkey", "unknown key")
    assert "\n" not in str(error)
