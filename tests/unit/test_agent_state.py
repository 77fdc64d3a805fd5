"""What an adopting agent recovers from maps, and the room a sync needs (pure: no kernel)."""
from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.backends.ebpf import MapFull, check_room
from dataplane.contract.limits import MapSizes
from dataplane.contract.render import Ids, NodeMaps, render_node
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS


def test_ids_recovered_from_the_maps_are_the_ones_given_and_never_reused():
    table = load(SCENARIOS / "affinity.yaml").services
    ids = Ids()
    maps = render_node(table, "node1", ids, IPv4Address("10.240.0.1"))
    back = Ids.recovered(maps, referenced=[(900, 800)])
    assert back.svc == ids.svc and back.backend == ids.backend
    # an affinity entry still names service 900 and backend 800: neither id is handed out again
    assert back.svc_id(("new", 1, 6)) == 901 and back.backend_id(("new", 1)) == 801
    # rendering again from the recovered ids changes nothing in the maps
    assert render_node(table, "node1", back, IPv4Address("10.240.0.1")) == maps


def test_lb_sources_count_as_references():
    maps = NodeMaps(lb_sources={(41, IPv4Network("10.128.0.0/16"))})
    assert Ids.recovered(maps).svc_id(("x", 1, 6)) == 42


def test_a_sync_is_measured_at_its_peak_not_its_end():
    table = load(SCENARIOS / "clusterip.yaml").services
    ids = Ids()
    now = render_node(table, "node1", ids, IPv4Address("10.240.0.1"))
    n = len(now.services)
    check_room("node1", NodeMaps(), now, MapSizes(services=n))            # exactly fits
    with pytest.raises(MapFull, match=f"the services map holds {n - 1} entries; this sync needs {n}"):
        check_room("node1", NodeMaps(), now, MapSizes(services=n - 1))
    # replacing every entry by as many new ones needs both sets at once
    moved = NodeMaps(services={replace(k, vip=k.vip + 65536): v for k, v in now.services.items()})
    with pytest.raises(MapFull, match=f"needs {2 * n} at its peak \\({n} when done\\)"):
        check_room("node1", now, moved, MapSizes(services=n + 1))
