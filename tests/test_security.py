"""Secrets stay secret; insecure transports are refused or warned about on every run."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle

import pytest
import yaml

from orchestrator.logs import SecretMaskFilter
from orchestrator.secret import Secret
from tests.conftest import make_lab_inventory
from tests.leaks import LeakSearch


def test_secret_never_shows_its_value():
    secret = Secret("Top-Secret-Value-42", "env:X")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>30}", "%s" % secret):  # noqa: UP031
        assert "Top-Secret-Value-42" not in shown
        assert "env:X" in shown
    assert secret.reveal() == "Top-Secret-Value-42"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_logging_filter_masks_known_secret_values():
    Secret("Masked-In-Logs-7")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskFilter())
    logger = logging.getLogger("keyfleet.test-mask")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting with %s to %s", "Masked-In-Logs-7", "host")
    finally:
        logger.removeHandler(handler)
    assert "Masked-In-Logs-7" not in stream.getvalue()
    assert "********" in stream.getvalue()


def test_a_short_secret_is_masked_alone_but_not_inside_host_names():
    from orchestrator.secret import mask

    Secret("scsm")
    assert mask("scsm-ms01.contoso.com and ms01-scsm and xscsmx") == "scsm-ms01.contoso.com and ms01-scsm and xscsmx"
    assert mask("password scsm rejected; 'scsm' user:scsm@host") == (
        "password ******** rejected; '********' user:********@host"
    )
    assert mask("the password was scsm. Then ms01.scsm and scsm.contoso") == (
        "the password was ********. Then ms01.scsm and scsm.contoso"
    )  # the end of a sentence is no name
    Secret("Long-Secret-9")
    assert mask("prefixLong-Secret-9suffix") == "prefix********suffix"  # 8 characters and more: anywhere


@pytest.mark.e2e
def test_basic_over_http_is_refused_before_any_connection(tmp_path, keyfleet):
    fleet = {"G": {"plain-basic": {"role": "management_server", "scheme": "http", "transport": "basic"}}}
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet)
    run = keyfleet("backup", "-i", str(lab.inventory))
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "inventory.yml:" in run.stderr and "allow_insecure" in run.stderr
    assert not lab.journal.exists()


@pytest.mark.e2e
def test_allow_insecure_and_disabled_validation_warn_on_every_run(tmp_path, keyfleet):
    fleet = {
        "G": {
            "plain-basic": {"role": "management_server", "scheme": "http", "transport": "basic",
                            "allow_insecure": True},
            "no-validation": {"role": "management_server", "scheme": "https", "transport": "basic",
                              "cert_validation": False},
        }
    }  # fmt: skip
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet)
    for _ in range(2):
        run = keyfleet("backup", "-i", str(lab.inventory))
        assert run.returncode == 0, run.stderr
        assert "plain-basic: allow_insecure is set" in run.stderr
        assert "no-validation: TLS certificate validation is off" in run.stderr


@pytest.mark.e2e
def test_inventory_command_leaks_nothing(tmp_path, keyfleet):
    winrm_password = f"Inv-WinRM-{os.urandom(6).hex()}"
    backup_password = f"Inv-Backup-{os.urandom(6).hex()}"
    lab = make_lab_inventory(tmp_path / "lab", winrm_password="env:KF_TEST_WINRM_PASSWORD",
                             backup={"password": "env:KF_TEST_BACKUP_PASSWORD"})  # fmt: skip
    env = {"KF_TEST_WINRM_PASSWORD": winrm_password, "KF_TEST_BACKUP_PASSWORD": backup_password}
    for args in (["--json"], [], ["--limit", "role:management_server", "--json"]):
        run = keyfleet("inventory", "-i", str(lab.inventory), "-v", *args, env=env)
        assert run.returncode == 0, run.stderr
        if "--json" in args:
            json.loads(run.stdout)
        search = LeakSearch({"winrm": winrm_password, "backup": backup_password})
        search.add("stdout", run.stdout)
        search.add("stderr", run.stderr)
        search.add("argv", " ".join(run.args))
        search.add_folder(tmp_path)
        search.assert_clean()


@pytest.mark.e2e
def test_plaintext_secret_in_a_production_inventory_is_refused(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab")
    document = yaml.safe_load(lab.inventory.read_text())
    del document["lab"]
    lab.inventory.write_text(yaml.safe_dump(document))
    run = keyfleet("inventory", "-i", str(lab.inventory))
    assert run.returncode == 2
    assert "plaintext" in run.stderr and "Lab-Test-Pw-1" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
