"""keyfleet over Kerberos and Negotiate against a real MIT KDC: the whole flow, and each Kerberos failure
with its kind and hint (exit 1, no traceback), the private credential cache, the user's own tickets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.session.kerberos import HINT_KDC, HINT_PASSWORD, HINT_SKEW, HINT_SPN
from tests.conftest import cli_env
from tests.krb import (
    FAKETIME,
    WINRM_PASSWORD,
    client_inventory,
    kerberos_lab,
    kinit,
    krb_env,
    outcomes,
    private_caches,
    require,
    require_faketime,
    served,
    service_ticket,
)
from tests.leaks import LeakSearch

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("_kdc_available")]

FLEET: dict[str, dict[str, Any]] = {
    "KRB": {
        "k-ms01": {"role": "management_server"},  # Kerberos over http, messages sealed with Kerberos
        "k-dw01": {"role": "dw_management_server", "scheme": "https", "ca_bundle": "lab"},  # + channel binding
        "k-portal01": {"role": "self_service_portal", "transport": "negotiate"},  # SPNEGO, Kerberos inside
        # SPNEGO on a server whose SPN is not registered: NTLM inside, as Windows falls back
        "k-ms02": {"role": "management_server", "transport": "negotiate", "lab": {"faults": ["no-spn"]}},
    }
}
EXPECTED_AUTH = {"k-ms01": "kerberos", "k-dw01": "kerberos", "k-portal01": "kerberos", "k-ms02": "ntlm"}


@pytest.fixture
def _kdc_available() -> None:
    require()


def journal_auth(lab) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for line in lab.journal.read_text().splitlines():
        entry = json.loads(line)
        if entry["auth"]:
            seen.setdefault(entry["host"], set()).add(entry["auth"])
    return seen


def test_backup_audit_restore_doctor_over_kerberos_and_negotiate(tmp_path, keyfleet):
    lab = kerberos_lab(tmp_path / "lab", FLEET)
    env = {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    backup = keyfleet("backup", "-i", str(lab.inventory), "--json", env=env)
    assert backup.returncode == 0, backup.stderr
    assert {h: o["status"] for h, o in outcomes(backup.stdout).items()} == dict.fromkeys(EXPECTED_AUTH, "ok")
    assert journal_auth(lab) == {h: {a} for h, a in EXPECTED_AUTH.items()}
    assert private_caches(tmp_path / "tmp") == []

    audit = keyfleet("audit", "-i", str(lab.inventory), "--format", "json")
    assert audit.returncode == 0, audit.stderr

    doctor = keyfleet("doctor", "-i", str(lab.inventory), "--json", env=env)
    assert doctor.returncode == 0, doctor.stderr
    assert {h["host"]: h["auth"] for h in json.loads(doctor.stdout)["hosts"]} == EXPECTED_AUTH
    table = keyfleet("doctor", "-i", str(lab.inventory), env=env)
    assert "✓ kerberos" in table.stderr and "✓ ntlm" in table.stderr, table.stderr

    for host in ("k-ms01", "k-dw01"):
        restore = keyfleet("restore", "-i", str(lab.inventory), "--host", host, "--yes", env=env)
        assert restore.returncode == 0, restore.stderr
    assert private_caches(tmp_path / "tmp") == []


def test_keytab_logon_for_unattended_runs(tmp_path, keyfleet):
    keytab = "file:lab-state/svc-keyfleet.keytab"  # the lab exports the account's keys there when it starts
    fleet = {"KRB": {"k-ms01": {"role": "management_server", "credential": {"username": "svc-keyfleet@LAB.TEST"}}}}
    lab = kerberos_lab(tmp_path / "lab", fleet)
    document = lab.inventory.read_text().replace(
        "username: svc-keyfleet@LAB.TEST", f"username: svc-keyfleet@LAB.TEST\n          keytab: {keytab}"
    )
    lab.inventory.write_text(document)
    run = keyfleet("backup", "-i", str(lab.inventory), "--json")
    assert run.returncode == 0, run.stderr
    assert journal_auth(lab) == {"k-ms01": {"kerberos"}}


def test_without_a_password_the_users_own_tickets_are_used(tmp_path, keyfleet):
    lab = kerberos_lab(tmp_path / "lab", {"KRB": {"k-ms01": {"role": "management_server"}}})
    ccache = tmp_path / "user-ccache"
    with served(lab) as fleet:
        kinit(fleet, "keyfleet@LAB.TEST", WINRM_PASSWORD, ccache)
        before = ccache.read_bytes()
        inventory = client_inventory(lab, "no-password.yml", _drop_password)
        env = krb_env(fleet, tmp_path / "tmp", KRB5CCNAME=f"FILE:{ccache}")
        run = keyfleet("backup", "-i", str(inventory), "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert journal_auth(lab) == {"k-ms01": {"kerberos"}}
    assert private_caches(tmp_path / "tmp") == []
    # the user's cache is only read: MIT adds the service ticket to it, the TGT stays
    assert ccache.read_bytes()[: len(before) // 2] == before[: len(before) // 2]


def _drop_password(document: dict[str, Any]) -> None:
    del document["defaults"]["credential"]["password"]


def _wrong_password(document: dict[str, Any]) -> None:
    document["defaults"]["credential"]["password"] = "Not-The-Password-9"


def assert_auth_failure(run, host: str, hint: str) -> None:
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    outcome = outcomes(run.stdout)[host]
    assert outcome["status"] == "failed" and outcome["kind"] == "auth", outcome
    assert f"hint: {hint}" in outcome["message"], outcome
    assert f"hint: {hint}" in run.stderr, run.stderr


def test_unknown_service_principal(tmp_path, keyfleet):
    fleet = {"KRB": {"k-ms01": {"role": "management_server", "lab": {"faults": ["no-spn"]}}}}
    lab = kerberos_lab(tmp_path / "lab", fleet)
    run = keyfleet("backup", "-i", str(lab.inventory), "--json")
    assert_auth_failure(run, "k-ms01", HINT_SPN)
    assert "HTTP/k-ms01.lab.test" in outcomes(run.stdout)["k-ms01"]["message"]


def test_kerberos_hostname_names_the_service_principal(tmp_path, keyfleet):
    fleet = {"KRB": {"k-ms01": {"role": "management_server", "kerberos_hostname": "wrong-name.lab.test"}}}
    lab = kerberos_lab(tmp_path / "lab", fleet)
    with served(lab) as fleet_served:
        # the lab registers HTTP/wrong-name.lab.test; keyfleet asks for the inventory's name
        inventory = client_inventory(lab, "client.yml", _kerberos_hostname("k-ms01.lab.test"))
        run = keyfleet("backup", "-i", str(inventory), "--json", env=krb_env(fleet_served, tmp_path / "tmp"))
    assert_auth_failure(run, "k-ms01", HINT_SPN)


def _kerberos_hostname(name: str) -> Any:
    def edit(document: dict[str, Any]) -> None:
        document["management_groups"]["KRB"]["hosts"]["k-ms01"]["kerberos_hostname"] = name

    return edit


def test_wrong_password(tmp_path, keyfleet):
    lab = kerberos_lab(tmp_path / "lab", {"KRB": {"k-ms01": {"role": "management_server"}}})
    with served(lab) as fleet:
        inventory = client_inventory(lab, "client.yml", _wrong_password)
        run = keyfleet("backup", "-i", str(inventory), "--json", env=krb_env(fleet, tmp_path / "tmp"))
    assert_auth_failure(run, "k-ms01", HINT_PASSWORD)
    assert private_caches(tmp_path / "tmp") == []


def test_negotiate_does_not_hide_a_wrong_password_behind_ntlm(tmp_path, keyfleet):
    lab = kerberos_lab(tmp_path / "lab", {"KRB": {"k-ms01": {"role": "management_server", "transport": "negotiate"}}})
    with served(lab) as fleet:
        inventory = client_inventory(lab, "client.yml", _wrong_password)
        run = keyfleet("backup", "-i", str(inventory), "--json", env=krb_env(fleet, tmp_path / "tmp"))
    assert_auth_failure(run, "k-ms01", HINT_PASSWORD)


def test_unreachable_kdc(tmp_path, keyfleet):
    lab = kerberos_lab(tmp_path / "lab", {"KRB": {"k-ms01": {"role": "management_server"}}})
    with served(lab) as fleet:
        assert fleet.kdc is not None
        fleet.kdc.stop()  # the servers still answer, the KDC does not
        inventory = client_inventory(lab, "client.yml")
        run = keyfleet("backup", "-i", str(inventory), "--json", env=krb_env(fleet, tmp_path / "tmp"))
    assert_auth_failure(run, "k-ms01", HINT_KDC)


def test_unknown_realm_points_at_krb5_conf(tmp_path, keyfleet):
    fleet = {"KRB": {"k-ms01": {"role": "management_server", "realm": "NOWHERE.TEST"}}}
    lab = kerberos_lab(tmp_path / "lab", fleet)
    run = keyfleet("backup", "-i", str(lab.inventory), "--json")
    assert_auth_failure(run, "k-ms01", HINT_KDC)


def test_negotiate_falls_back_to_ntlm_when_the_kdc_is_unreachable(tmp_path, keyfleet):
    fleet = {"KRB": {"k-ms01": {"role": "management_server", "transport": "negotiate"}}}
    lab = kerberos_lab(tmp_path / "lab", fleet)
    with served(lab) as served_fleet:
        assert served_fleet.kdc is not None
        served_fleet.kdc.stop()
        inventory = client_inventory(lab, "client.yml")
        run = keyfleet("doctor", "-i", str(inventory), "--json", env=krb_env(served_fleet, tmp_path / "tmp"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["hosts"][0]["auth"] == "ntlm"


def test_clock_skew_of_the_controller(tmp_path, keyfleet):
    """The controller's clock is an hour ahead: the KDC refuses its logon (pre-authentication timestamp)."""
    require_faketime()
    lab = kerberos_lab(tmp_path / "lab", {"KRB": {"k-ms01": {"role": "management_server"}}})
    with served(lab) as fleet:
        inventory = client_inventory(lab, "client.yml")
        env = krb_env(fleet, tmp_path / "tmp", LD_PRELOAD=str(FAKETIME), FAKETIME="+1h", FAKETIME_DONT_RESET="1")
        run = keyfleet("backup", "-i", str(inventory), "--json", env=env)
    assert_auth_failure(run, "k-ms01", HINT_SKEW)


def test_clock_skewed_ticket_is_refused_by_the_server(tmp_path, keyfleet):
    """A valid ticket, but the controller's clock is an hour ahead: the server refuses the authenticator
    (KRB_AP_ERR_SKEW) and says why in its 401, as Windows does."""
    require_faketime()
    lab = kerberos_lab(tmp_path / "lab", {"KRB": {"k-ms01": {"role": "management_server"}}})
    ccache = tmp_path / "user-ccache"
    with served(lab) as fleet:
        kinit(fleet, "keyfleet@LAB.TEST", WINRM_PASSWORD, ccache)
        service_ticket(fleet, "HTTP/k-ms01.lab.test", ccache)  # no KDC exchange needed with the skewed clock
        inventory = client_inventory(lab, "client.yml", _drop_password)
        env = krb_env(fleet, tmp_path / "tmp", KRB5CCNAME=f"FILE:{ccache}", LD_PRELOAD=str(FAKETIME), FAKETIME="+1h")
        run = keyfleet("backup", "-i", str(inventory), "--json", env=env)
        refused = [e.detail or "" for e in fleet.journal.entries("k-ms01") if e.status == 401]
    assert_auth_failure(run, "k-ms01", HINT_SKEW)
    assert any("AP-REQ refused" in detail for detail in refused), refused  # by the server, not the KDC


def test_kerberos_run_leaks_neither_password_nor_keytab(tmp_path, keyfleet):
    password = f"Unique-Krb-{Path(tmp_path).name[-6:]}-x9"
    fleet = {
        "KRB": {
            "k-ms01": {"role": "management_server"},
            "k-dw01": {"role": "dw_management_server", "scheme": "https", "ca_bundle": "lab"},
            "k-ms02": {
                "role": "management_server",
                "transport": "negotiate",
                "credential": {"username": "svc-keyfleet@LAB.TEST", "keytab": "file:keytabs/svc.keytab"},
            },
        }
    }
    lab = kerberos_lab(
        tmp_path / "lab",
        fleet,
        defaults={"credential": {"username": "LAB\\keyfleet", "password": "env:KF_TEST_WINRM_PASSWORD"}},
    )
    env = {"KF_TEST_WINRM_PASSWORD": password, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    run = keyfleet("backup", "-i", str(lab.inventory), "--json", "-v", env=env)
    assert run.returncode == 0, run.stderr
    doctor = keyfleet("doctor", "-i", str(lab.inventory), "--json", "-v", env=env)
    assert doctor.returncode == 0, doctor.stderr
    assert private_caches(tmp_path / "tmp") == []
    keytab_file = lab.inventory.parent / "keytabs" / "svc.keytab"
    search = LeakSearch({"winrm password": password})
    search.exclude.add(keytab_file)
    for name, text in (("stdout", run.stdout + doctor.stdout), ("stderr", run.stderr + doctor.stderr)):
        search.add(name, text)
    search.add("argv", " ".join(run.args + doctor.args))
    search.add_folder(tmp_path)
    assert search.assert_clean() > 5
    # the keytab's keys are nowhere but in the keytab itself
    keys = keytab_keys(keytab_file)
    assert len(keys) >= 2 and all(key in keytab_file.read_bytes() for key in keys)
    found = [source for key in keys for source in search.where(key)]
    assert found == [], found


def keytab_keys(path: Path) -> list[bytes]:
    import krb5

    return [bytes(entry.key.data) for entry in krb5.kt_resolve(krb5.init_context(), f"FILE:{path}".encode())]


def test_the_kerberos_lab_inventory_backs_up_every_host(tmp_path, keyfleet):
    inventory = tmp_path / "lab-kerberos.yml"  # a copy: its state and share are written beside it
    inventory.write_text((Path(__file__).resolve().parents[1] / "inventories" / "lab-kerberos.yml").read_text())
    run = keyfleet("backup", "-i", str(inventory), "--json", env={"TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert {o["status"] for o in outcomes(run.stdout).values()} == {"ok"}
    assert len(outcomes(run.stdout)) == 4
    journal = tmp_path / "lab-kerberos-state" / "journal.jsonl"
    assert {json.loads(line)["auth"] for line in journal.read_text().splitlines()} == {None, "kerberos"}
    assert private_caches(tmp_path) == []


def test_interrupted_run_removes_its_private_credential_cache(tmp_path):
    fleet = {"KRB": {"k-ms01": {"role": "management_server", "lab": {"faults": ["latency:1"]}}}}
    lab = kerberos_lab(tmp_path / "lab", fleet)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp_path / "home").mkdir()
    argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(lab.inventory)]
    env = cli_env(tmp_path / "home", {"TMPDIR": str(tmp)})
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path) as proc:
        deadline = time.monotonic() + 30

        def ticket_written() -> bool:  # the folder is made first, the ticket written into it a moment later
            caches = private_caches(tmp)
            return bool(caches) and any(caches[0].iterdir())

        while not ticket_written() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert private_caches(tmp), "no private credential cache while the run was going on"
        assert list(private_caches(tmp)[0].iterdir()), "the cache folder holds the run's ticket"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert private_caches(tmp) == []


def test_a_slow_logon_holds_up_only_the_hosts_of_its_own_credential(tmp_path):
    """One AS exchange per credential, and none waits for another credential's KDC: the caches lock per
    credential, not across every logon (a KDC that does not answer for one account stalled them all)."""
    import threading

    from orchestrator.inventory.model import Credential
    from orchestrator.secret import Secret
    from orchestrator.session.kerberos import TicketCaches

    release = threading.Event()
    logons: list[str] = []

    class Caches(TicketCaches):
        def _kinit(self, principal, password, keytab, cache):
            logons.append(principal)
            if principal.startswith("slow"):
                assert release.wait(10)
            return cache

    def host(user: str) -> Any:
        return type("Host", (), {"credential": Credential(username=user, password=None), "realm": "LAB.TEST"})()

    caches = Caches()
    slow = [threading.Thread(target=caches.ccache, args=(host("slow"), Secret("Pw-slow-12345"))) for _ in range(3)]
    for thread in slow:
        thread.start()
    time.sleep(0.2)  # the slow logon is under way
    try:
        started = time.monotonic()
        fast = caches.ccache(host("fast"), Secret("Pw-fast-12345"))  # returns while the slow one waits
        assert time.monotonic() - started < 2  # not after the slow logon's 10 s
        assert fast is not None and fast.startswith("FILE:")
    finally:
        release.set()
        for thread in slow:
            thread.join(10)
    assert sorted(logons) == ["fast@LAB.TEST", "slow@LAB.TEST"]  # one AS exchange per credential
    caches.remove()
