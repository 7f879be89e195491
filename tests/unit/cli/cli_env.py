"""What every CLI unit test needs: none of this shell's capsule settings leak in, and a
wide terminal so that tables are not wrapped. Imported by the CLI test modules (not a
conftest.py: that name would shadow tests/conftest.py, which other tests import)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CAPSULE_URL", "CAPSULE_TOKEN", "CAPSULED_STATE_DIR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "250")
