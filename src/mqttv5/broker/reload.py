"""One reload registry, driven by SIGHUP: every component that can take a new configuration at
run time registers a function; settings that cannot change without a restart are reported."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .config import BrokerConfig

__all__ = ["ReloadRegistry"]

log = logging.getLogger("mqttv5.broker")

Applier = Callable[[BrokerConfig, BrokerConfig], list[str]]


class ReloadRegistry:
    """Named appliers, run in registration order by :meth:`apply`."""

    def __init__(self) -> None:
        self._appliers: dict[str, Applier] = {}

    def register(self, name: str, applier: Applier) -> None:
        """Add (or replace) the component ``name``: ``applier(old, new)`` applies what it can
        and returns the keys that need a restart."""
        self._appliers[name] = applier

    def apply(self, old: BrokerConfig, new: BrokerConfig) -> list[str]:
        """Run every applier; return the union of keys that need a restart, in order.

        An applier that raises is logged and its component keeps its old settings; the others
        still apply.
        """
        needs_restart: list[str] = []
        for name, applier in self._appliers.items():
            try:
                keys = applier(old, new)
            except Exception:
                log.exception("reload of %s failed; it keeps its previous settings", name)
                continue
            needs_restart.extend(k for k in keys if k not in needs_restart)
        return needs_restart
