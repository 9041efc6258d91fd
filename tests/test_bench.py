"""`keyfleet lab bench` measures and reports ratios; the assertions are on counts, never on time."""

from __future__ import annotations

import json


def test_bench_reports_budget_ratios_for_a_small_fleet(keyfleet):
    run = keyfleet("lab", "bench", "--hosts", "6", "--forks", "3", "--latency", "0", "--json", timeout=180)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["hosts"] == 6 and result["failures"] == 0
    assert result["request_budget_ratio"] <= 1.0
    assert result["connections_per_host"] == 1.0
    assert result["speedup"] > 0 and result["rss_growth_ratio"] >= 1.0
    assert "speed-up over forks=1" in run.stderr and "WS-Man requests per host" in run.stderr
