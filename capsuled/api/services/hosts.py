"""PLACEHOLDER written by the lead so the app imports; helper replaces this file entirely."""

from __future__ import annotations

from datetime import timedelta

from capsuled.store.engine import Store


class HostService:
    def __init__(self, store: Store, host_down_after: timedelta) -> None:
        self._store = store
        self._down_after = host_down_after
