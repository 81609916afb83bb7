"""The few statements of the set-based ingest that differ between PostgreSQL and SQLite.

Everything else in ``hypervisors/ingest.py`` is one SQL text for both. Staging tables are
temporary: PostgreSQL drops them at commit, SQLite when the next apply starts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence

from django.db import connection

STAGE_HV = "sam_stage_hv"
STAGE_GUEST = "sam_stage_guest"
STAGE_TOUCHED = "sam_stage_touched"


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def _types() -> dict[str, str]:
    if is_postgres():
        return {"int": "bigint", "text": "text", "bool": "boolean", "json": "jsonb", "uuid": "uuid",
                "temp": "ON COMMIT DROP"}
    return {"int": "integer", "text": "text", "bool": "integer", "json": "text", "uuid": "char(32)",
            "temp": ""}


def create_tables(cursor) -> None:
    t = _types()
    if not is_postgres():
        for table in (STAGE_HV, STAGE_GUEST, STAGE_TOUCHED):
            cursor.execute(f"DROP TABLE IF EXISTS temp.{table}")
    cursor.execute(
        f"""CREATE TEMP TABLE {STAGE_HV} (
            idx {t['int']} PRIMARY KEY, hv_id {t['text']} NOT NULL, name {t['text']},
            create_name {t['text']} NOT NULL, has_facts {t['bool']} NOT NULL,
            facts {t['json']} NOT NULL, dmi {t['text']}, is_guest {t['bool']} NOT NULL,
            virt_uuid {t['text']}, virt_uuid_swapped {t['text']}, has_guests {t['bool']} NOT NULL,
            keep_meta {t['bool']} NOT NULL, new_uuid {t['uuid']} NOT NULL,
            system_id {t['int']}, created {t['bool']} NOT NULL DEFAULT FALSE,
            changed {t['bool']} NOT NULL DEFAULT FALSE, failed {t['text']}) {t['temp']}"""
    )
    cursor.execute(
        f"""CREATE TEMP TABLE {STAGE_GUEST} (
            system_id {t['int']} NOT NULL, guest_uuid {t['text']} NOT NULL,
            attributes {t['json']} NOT NULL, PRIMARY KEY (system_id, guest_uuid)) {t['temp']}"""
    )
    cursor.execute(
        f"""CREATE TEMP TABLE {STAGE_TOUCHED} (
            guest_uuid {t['text']} PRIMARY KEY, host_id {t['int']}) {t['temp']}"""
    )


def drop_tables(cursor) -> None:
    if not is_postgres():
        for table in (STAGE_HV, STAGE_GUEST, STAGE_TOUCHED):
            cursor.execute(f"DROP TABLE IF EXISTS temp.{table}")


def load(cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Bulk-load rows: COPY on PostgreSQL, one prepared multi-row executemany on SQLite."""
    names = ", ".join(columns)
    if is_postgres():
        raw = cursor.cursor  # the psycopg cursor behind Django's wrapper
        with raw.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join(["%s"] * len(columns))
    cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(rows))


def analyze(cursor, table: str) -> None:
    """Give the planner row counts of a freshly loaded temp table (autovacuum never sees it)."""
    if is_postgres():
        cursor.execute(f"ANALYZE {table}")


def set_newest_host_sql(touched: str, guest_table: str) -> str:
    """UPDATE ``touched`` with the newest reporting host of each guest UUID (one param: org)."""
    if is_postgres():
        return (
            f"UPDATE {touched} SET host_id = d.host_id FROM (SELECT DISTINCT ON (g.guest_uuid) "
            f"g.guest_uuid, g.host_id FROM {guest_table} g JOIN {touched} t "
            f"ON g.guest_uuid = t.guest_uuid WHERE g.org_id = %s "
            f"ORDER BY g.guest_uuid, g.updated DESC, g.id DESC) d "
            f"WHERE {touched}.guest_uuid = d.guest_uuid")
    return (
        f"UPDATE {touched} SET host_id = (SELECT g.host_id FROM {guest_table} g "
        f"WHERE g.org_id = %s AND g.guest_uuid = {touched}.guest_uuid "
        f"ORDER BY g.updated DESC, g.id DESC LIMIT 1)")


def json_value(value) -> str:
    """A JSON column value as text (COPY and SQLite both take text)."""
    return json.dumps(value)


def uuid_value(value: uuid.UUID) -> str:
    """A UUID as the backend stores Django's UUIDField (native on PostgreSQL, hex on SQLite)."""
    return str(value) if is_postgres() else value.hex


def bool_value(value: bool):
    return value if is_postgres() else int(value)


def distinct(left: str, right: str, json: bool = False) -> str:
    """SQL for "left differs from right", NULLs included (JSON compared by value)."""
    if is_postgres():
        return f"({left} IS DISTINCT FROM {right})"
    if json:
        return f"(json({left}) IS NOT json({right}))"
    return f"({left} IS NOT {right})"


def true() -> str:
    return "TRUE" if is_postgres() else "1"


def false() -> str:
    return "FALSE" if is_postgres() else "0"


def json_literal(text: str) -> str:
    """A constant JSON value usable in a SELECT list that feeds a JSON column."""
    return f"CAST('{text}' AS jsonb)" if is_postgres() else f"'{text}'"
