"""HA: which replica acts, read from kopf's peering object (the rule kopf pauses its handlers by,
applied to the operator's own timers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubetune.controller.peering import peering_acting

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict:
    lastseen = (NOW - timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lastseen": lastseen, "lifetime": lifetime}


def test_the_highest_priority_alive_replica_acts_and_the_others_stand_by():
    peering = {"status": {"a": _peer(100, 5), "b": _peer(50, 5)}}
    assert peering_acting(peering, 100, NOW)
    assert not peering_acting(peering, 50, NOW)


def test_a_standby_acts_once_the_higher_replicas_keepalive_has_expired():
    peering = {"status": {"a": _peer(100, 11, lifetime=10), "b": _peer(50, 1)}}
    assert peering_acting(peering, 50, NOW)


def test_alone_or_without_a_readable_peering_a_replica_acts():
    assert peering_acting({"status": {"b": _peer(50, 1)}}, 50, NOW)
    assert peering_acting(None, 50, NOW)
