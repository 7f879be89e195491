"""Engine options per database URL, and errors that name the URL but never its password."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from capsuled.cli.server import app
from capsuled.errors import InvalidInput, Unavailable
from capsuled.store.engine import Store, make_engine, safe_url, upgrade


def test_mariadb_urls_get_utf8mb4_and_the_shipped_driver() -> None:
    engine = make_engine("mysql://capsuled:secret@db.example/capsuled")
    assert engine.url.drivername == "mysql+pymysql"
    assert engine.url.query["charset"] == "utf8mb4"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]
    kept = make_engine("mysql+pymysql://u@h/d?charset=utf8mb3")
    assert kept.url.query["charset"] == "utf8mb3"


def test_postgresql_urls_use_psycopg_3() -> None:
    engine = make_engine("postgresql://capsuled:secret@db.example/capsuled")
    assert engine.url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize("url, problem", [
    ("oracle://u:p@h/d", "oracle is not supported"),
    ("not a url", "cannot parse it"),
])
def test_unusable_urls_are_invalid_input(url: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        make_engine(url)


def test_an_unreachable_database_is_unavailable_without_its_password() -> None:
    url = "postgresql+psycopg://capsuled:s3cret@127.0.0.1:1/capsuled?connect_timeout=2"
    with pytest.raises(Unavailable) as upgrading:
        upgrade(make_engine(url))
    with pytest.raises(Unavailable) as querying:
        with Store(make_engine(url)).transaction() as s:
            s.execute(text("SELECT 1"))
    for exc in (upgrading.value, querying.value):
        assert "postgresql+psycopg://capsuled:***@127.0.0.1:1/capsuled" in exc.message
        assert "s3cret" not in exc.message
    assert safe_url("mysql+pymysql://root:pw@h/d") == "mysql+pymysql://root:***@h/d"


def test_db_upgrade_creates_then_leaves_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'capsuled.db'}"
    first = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert first.exit_code == 0, first.output
    assert "created the schema at revision" in first.output
    again = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert again.exit_code == 0 and "nothing to do" in again.output
    bad = CliRunner().invoke(app, ["db", "upgrade", "--database-url",
                                   "mysql+pymysql://root:pw@127.0.0.1:1/x"])
    assert bad.exit_code == 1 and "unavailable" in bad.output and "pw@" not in bad.output


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_sqlite_files_are_private_from_the_start_and_tightened_later(tmp_path: Path) -> None:
    db = tmp_path / "capsuled.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)  # writes: SQLite makes its -wal and -shm with the database's mode
    assert _mode(db) == 0o600
    sides = [p for p in tmp_path.iterdir() if p.name.startswith("capsuled.db-")]
    assert sides and all(_mode(p) == 0o600 for p in sides), [(p, oct(_mode(p))) for p in sides]
    for p in [db, *sides]:
        p.chmod(0o644)  # as an install from before the rule left them
    make_engine(f"sqlite:///{db}").dispose()  # (while the first holds them open)
    assert all(_mode(p) == 0o600 for p in [db, *sides])
    engine.dispose()


def test_private_dir_tightens_its_own_directory_but_never_a_shared_sticky_one(tmp_path: Path) -> None:
    from capsuled.paths import private_dir

    state = tmp_path / "a" / "state"
    private_dir(state)
    assert _mode(state) == 0o700
    state.chmod(0o755)
    private_dir(state)
    assert _mode(state) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    private_dir(shared)
    assert shared.stat().st_mode & 0o7777 == 0o1777
