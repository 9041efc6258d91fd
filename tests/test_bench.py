"""`keyfleet lab bench` times whole processes and reports against ideal, floor and baseline; the
assertions are on counts and on the arithmetic of the report, never on speed."""

from __future__ import annotations

import json
import math


def test_bench_reports_whole_process_figures_for_a_small_fleet(keyfleet, loopback):
    run = keyfleet(
        "lab", "bench", "--hosts", "6", "--forks", "3", "--latency", "0", "--kdf", "cheap",
        "--base-address", loopback.run(6), "--json", timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["hosts"] == 6 and result["failures"] == 0 and result["kdf"] == "cheap"
    assert result["requests_per_host"] == 5.0
    assert result["connections_per_host"] == 1.0
    assert abs(result["ideal_seconds"] - math.ceil(6 / 3) * result["chain_seconds"]) <= 0.002
    assert abs(result["ratio"] - result["wall_seconds"] / max(result["ideal_seconds"], result["floor_seconds"])) < 0.01
    assert result["controller_cpu_ms_per_host"] > 0 and result["controller_peak_rss_mib"] > 10
    assert result["baseline_wall_seconds"] > 0 and result["lab_cpu_ms_per_host"] > 0
    baseline_bound = max(result["ideal_seconds"], result["baseline_floor_seconds"])
    assert abs(result["baseline_ratio"] - result["baseline_wall_seconds"] / baseline_bound) < 0.01
    # the floor holds the lab's CPU during the baseline too (about 7 ms a host), not the baseline's alone
    assert result["baseline_floor_seconds"] * result["cores"] > result["baseline_cpu_ms_per_host"] * 6 / 1000 + 0.01
    for label in ("ideal", "CPU floor", "controller peak RSS", "baseline: pywinrm pool", "baseline wall / max(ideal"):
        assert label in run.stderr


def test_bench_refuses_an_address_range_outside_loopback(keyfleet):
    run = keyfleet("lab", "bench", "--hosts", "300", "--base-address", "127.255.255.1", "--json")
    assert run.returncode == 2
    assert json.loads(run.stdout)["error"]["kind"] == "config"


def test_the_history_bench_uses_the_forks_asked_for(keyfleet):
    run = keyfleet("lab", "bench", "--history", "20", "--history-hosts", "6", "--forks", "3", "--json", timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["workers"] == 3  # not silently raised to 128
    assert "6-host backup" in run.stderr and "3 workers" in run.stderr
