"""HA: an active/standby pair through kopf peering. kopf pauses its own handlers on a standby;
:class:`Peering` applies kopf's rule to the operator's own timers (requeues, resync), which
kopf does not pause."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from kubetune.controller.api_client import ApiClient, describe
from kubetune.controller.config import OperatorConfig
from kubetune.controller.lifecycle import parse_time

log = logging.getLogger("kubetune.operator")

PEERING = "kubetune"  # the kopf peering object's name
PEERING_CHECK_SECONDS = 2.0


def peering_acting(peering: dict[str, Any] | None, priority: int, now: datetime) -> bool:
    """Whether the replica with ``priority`` is the one that acts, from kopf's peering object
    (status: one entry per replica with priority, lastseen, lifetime): no live replica has a
    higher priority. kopf pauses its own handlers by the same rule; this applies it to the
    operator's own timers (requeues, resync), which kopf does not pause."""
    for info in ((peering or {}).get("status") or {}).values():
        if not isinstance(info, dict):
            continue
        lastseen = parse_time(info.get("lastseen"))
        lifetime = float(info.get("lifetime") or 60)
        alive = lastseen is None or (now - lastseen).total_seconds() < lifetime
        if alive and int(info.get("priority") or 0) > priority:
            return False
    return True


class Peering:
    """Whether this replica acts (always, without HA), read from the peering object at most
    every PEERING_CHECK_SECONDS."""

    def __init__(self, config: OperatorConfig, api: ApiClient) -> None:
        self.config = config
        self.api = api
        self.priority = 0
        self.acting = True
        self._checked = float("-inf")

    def configure(self, settings: kopf.OperatorSettings) -> None:
        """kopf's peering settings, at start-up (a standby until the peering object says
        otherwise)."""
        config = self.config
        if not config.ha:
            settings.peering.standalone = True
            return
        self.priority = config.peering_priority or random.SystemRandom().randint(1, 2**31 - 1)
        self.acting, self._checked = False, float("-inf")
        settings.peering.standalone = False
        settings.peering.name = PEERING
        settings.peering.mandatory = True
        settings.peering.clusterwide = config.namespace is None
        settings.peering.priority = self.priority
        settings.peering.lifetime = config.peering_lifetime

    def _read(self) -> dict[str, Any] | None:
        if self.config.namespace is None:
            return self.api.get("kopf.dev/v1", "ClusterKopfPeering", PEERING, None)
        return self.api.get("kopf.dev/v1", "KopfPeering", PEERING, self.config.namespace)

    async def is_acting(self) -> bool:
        if not self.config.ha:
            return True
        now = time.monotonic()
        if now - self._checked > PEERING_CHECK_SECONDS:
            self._checked = now
            try:
                peering = await asyncio.to_thread(self._read)
            except Exception as err:
                log.warning("peering: cannot read %s (%s)", PEERING, describe(err))
            else:
                acting = peering_acting(peering, self.priority, datetime.now(UTC))
                if acting != self.acting:
                    log.info(
                        "peering: %s (priority %s)",
                        "acting" if acting else "standby",
                        self.priority,
                    )
                self.acting = acting
        return self.acting
