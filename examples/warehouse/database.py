"""The warehouse's SQLite database: creation, seed data, and the schema read from it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

CREATE_TABLES = """
CREATE TABLE manufacturers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    country TEXT NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    manufacturer_id INTEGER NOT NULL REFERENCES manufacturers(id),
    price_cents INTEGER NOT NULL,
    stock INTEGER NOT NULL DEFAULT 0
);
"""

MANUFACTURERS = [(1, "Acme Tools", "US"), (2, "Nordic Steel", "SE"), (3, "Kaze Works", "JP")]
PRODUCTS = [
    (1, "Claw hammer", 1, 1999, 120),
    (2, "Socket set", 1, 5450, 35),
    (3, "Chisel", 2, 1275, 80),
    (4, "Hand plane", 3, 8900, 12),
]

CHARTS = [{"name": "stock_by_manufacturer", "type": "bar", "collection": "products"}]


def connect(path: Path) -> sqlite3.Connection:
    """Open the database, creating and seeding it when it has no tables yet.

    The check and the creation are one write transaction, so the workers of one server
    starting together create it once, and none reads a half-made file.
    """
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    connection.row_factory = sqlite3.Row
    connection.execute("BEGIN IMMEDIATE")
    try:
        if connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            for statement in CREATE_TABLES.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.executemany("INSERT INTO manufacturers VALUES (?, ?, ?)", MANUFACTURERS)
            connection.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?)", PRODUCTS)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return connection


def read_schema(connection: sqlite3.Connection) -> dict[str, Any]:
    """Collections (tables with their columns and types) and charts, in a stable order."""
    tables = [
        row["name"]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    collections = []
    for table in tables:
        columns = connection.execute("SELECT * FROM pragma_table_info(?)", (table,)).fetchall()
        fields = [
            {
                "name": column["name"],
                "type": column["type"] or "ANY",
                "primary_key": bool(column["pk"]),
                "nullable": not column["notnull"] and not column["pk"],
            }
            for column in columns
        ]
        collections.append({"name": table, "fields": fields})
    return {"collections": collections, "charts": CHARTS}


def add_column(path: Path, table: str, column: str, sql_type: str) -> None:
    """A migration: add one column to one table (used by the demo and the tests)."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {sql_type}')
    finally:
        connection.close()


def check_database(path: Path, timeout: float = 1.0) -> None:
    """The warehouse's readiness check: a new connection to the database at `path` answers
    `SELECT 1`; raises when the file is gone or unreadable, or locked past `timeout`.

    It opens the file read-write without creating it (`mode=rw`), so a database moved away or
    deleted is an outage, where a plain `connect` would make an empty one."""
    connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout)
    try:
        connection.execute("SELECT 1").fetchone()
    finally:
        connection.close()
