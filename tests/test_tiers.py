"""Every test is in exactly one tier (unit, lab, e2e), and lab addresses come from disjoint per-worker ranges."""

from __future__ import annotations

import ipaddress
import itertools
import os

import pytest

from tests.conftest import TIERS, tiers_of
from tests.loopback import ALLOCATOR, FIRST_OCTET, MAX_WORKERS, LoopbackAllocator, claim, worker_index


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert request.node in items
    wrong = {item.nodeid: tiers_of(item) for item in items if len(tiers_of(item)) != 1}
    assert wrong == {}, f"tests without exactly one of {TIERS}: {wrong}"


def test_tiers_are_declared_markers(pytestconfig: pytest.Config) -> None:
    declared = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert {*TIERS, "slow"} <= declared


def test_worker_names_map_to_indexes() -> None:
    assert [worker_index(name) for name in (None, "", "master", "gw0", "gw7", "gw126")] == [0, 0, 0, 0, 7, 126]
    with pytest.raises(ValueError, match="not gwN"):
        worker_index("node-3")
    with pytest.raises(ValueError, match="xdist workers at most"):
        LoopbackAllocator(MAX_WORKERS)


def test_workers_own_disjoint_loopback_ranges() -> None:
    networks = [LoopbackAllocator(index).network for index in range(MAX_WORKERS)]
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    assert all(network.subnet_of(loopback) for network in networks)
    assert not any(a.overlaps(b) for i, a in enumerate(networks) for b in networks[i + 1 :])
    # the defaults of `keyfleet lab up` (127.0.20.1) and `lab bench` (127.1.0.1) are outside every worker's range
    for default in ("127.0.20.1", "127.1.0.1", "127.0.0.1"):
        assert not any(ipaddress.IPv4Address(default) in network for network in networks)


def test_allocations_of_one_worker_never_overlap_until_it_wraps() -> None:
    allocator = LoopbackAllocator(3)
    runs: list[tuple[int, int]] = []
    for count in (1, 6, 254, 255, 1000, 1, 12):
        first = int(ipaddress.IPv4Address(allocator.run(count)))
        runs.append((first, first + count - 1))
    for first, last in runs:
        assert ipaddress.IPv4Address(first) in allocator.network and ipaddress.IPv4Address(last) in allocator.network
    assert all(a[1] < b[0] for a, b in itertools.pairwise(runs))  # ascending, disjoint
    subnets = [allocator.subnet() for _ in range(256)]  # past the end of the /16: starts again at its first /24
    assert all(subnet.subnet_of(allocator.network) for subnet in subnets)
    assert allocator.network.network_address in {subnet.network_address for subnet in subnets}
    with pytest.raises(ValueError, match="do not fit"):
        allocator.run(70000)


def test_this_worker_uses_a_range_it_holds(worker_id: str) -> None:
    """Its own (127.(128+N)) unless another test session's worker holds that; never one another process holds."""
    index = ALLOCATOR.network.network_address.packed[1] - FIRST_OCTET
    assert 0 <= index < MAX_WORKERS and ALLOCATOR.network == ipaddress.IPv4Network(f"127.{FIRST_OCTET + index}.0.0/16")
    other, fd = claim(index)  # as another session's worker would: it gets another range
    os.close(fd)
    assert other != index
    worker_index(worker_id)  # a worker name this module understands
