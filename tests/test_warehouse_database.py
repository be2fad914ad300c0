"""The warehouse database: created once, whole, however many workers open it together."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from examples.warehouse.database import connect, read_schema

WORKERS = 4


def schema_size(path: str) -> int:
    return len(read_schema(connect(Path(path)))["collections"])


def test_workers_starting_together_all_see_the_whole_seeded_database(tmp_path: Path) -> None:
    for trial in range(5):
        path = str(tmp_path / f"warehouse-{trial}.db")
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            sizes = pool.map(schema_size, [path] * WORKERS)
        assert sizes == [2] * WORKERS


def test_an_existing_database_is_opened_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.db"
    connect(path).execute("DELETE FROM products")
    again = connect(path)
    assert again.execute("SELECT count(*) FROM products").fetchone()[0] == 0
    assert again.execute("SELECT count(*) FROM manufacturers").fetchone()[0] == 3
