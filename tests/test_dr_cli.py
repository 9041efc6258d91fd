"""The disaster-recovery drill through the command line only: back up, rebuild, restore."""

from __future__ import annotations

from orchestrator.inventory.loader import load_inventory
from orchestrator.lab.fleet import lab_machine


def test_dr_drill_through_the_command_line(lab_inventory, keyfleet):
    lab = lab_inventory()
    assert keyfleet("backup", "-i", str(lab.inventory), "--limit", "t-dw01").returncode == 0
    machine = lab_machine(load_inventory(lab.inventory), "t-dw01")
    original = machine.current_key()

    rebuilt = keyfleet("lab", "rebuild", "-i", str(lab.inventory), "--host", "t-dw01")
    assert rebuilt.returncode == 0, rebuilt.stderr
    rebuilt_key = machine.current_key()
    assert rebuilt_key != original

    wrong = keyfleet("restore", "-i", str(lab.inventory), "--host", "t-dw01", "--yes",
                     env={"KEYFLEET_BACKUP_PASSWORD": "Not-The-Password-1"})  # fmt: skip
    assert wrong.returncode == 2  # the share's verifier of password_id test-1 refuses it before any host
    assert "password does not match password_id 'test-1'" in wrong.stderr and "Traceback" not in wrong.stderr
    assert machine.current_key() == rebuilt_key  # a refused restore leaves the server's key alone

    restored = keyfleet("restore", "-i", str(lab.inventory), "--host", "t-dw01", "--yes")
    assert restored.returncode == 0, restored.stderr
    assert machine.current_key() == original
