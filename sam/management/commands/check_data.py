"""``manage.py check_data [--fix]``: find stored values that break readers, and repair them.

Rows written before the input rules existed (``sam.inputs``) may hold dates outside
1900-01-01..9999-01-01 (an import with ``0001-01-01T00:00:00+05:00`` stored 1 BC, which psycopg
cannot read: every page showing the row answered 500) or an end not after its start. Every
date and date-time column of every model is checked with SQL that never reads the bad value
into Python: the old value is selected as text, next to the value clamped to the nearest bound.
``--fix`` writes the clamped values (an end that would not be after its start moves one day
past it) and reports each change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, models, transaction
from django.utils import dateparse

from sam import inputs
from subscriptions.models import Pool, Subscription

# Periods whose end must stay after their start.
PERIODS = {Subscription: ("start", "end"), Pool: ("start", "end")}


@dataclass
class Row:
    """One row with at least one bad value: old values as text, repaired values readable."""

    model: type[models.Model]
    pk: Any
    old: dict[str, str | None] = field(default_factory=dict)
    new: dict[str, Any] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # columns to change, in order

    @property
    def label(self) -> str:
        return f"{self.model._meta.db_table} {self.model._meta.pk.column}={self.pk}"


def _bounds(column: models.Field) -> tuple[Any, Any]:
    ops = connection.ops
    if isinstance(column, models.DateTimeField):
        return (ops.adapt_datetimefield_value(inputs.DATE_MIN),
                ops.adapt_datetimefield_value(inputs.DATE_MAX))
    return ops.adapt_datefield_value(inputs.DATE_MIN.date()), ops.adapt_datefield_value(
        inputs.DATE_MAX.date())


def _readable(column: models.Field, value: Any) -> Any:
    """A clamped value as Python (SQLite hands text back)."""
    if value is None or not isinstance(value, str):
        return value
    if isinstance(column, models.DateTimeField):
        parsed = dateparse.parse_datetime(value)
        return parsed if parsed is None or parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return dateparse.parse_date(value)


def _date_columns(model: type[models.Model]) -> list[models.Field]:
    return [f for f in model._meta.concrete_fields
            if isinstance(f, models.DateField) and not f.primary_key]


def find_rows(model: type[models.Model]) -> list[Row]:
    """Rows of ``model`` with a date out of range, or a period that does not end after its
    start; one scan of the table."""
    columns = _date_columns(model)
    if not columns:
        return []
    q = connection.ops.quote_name
    select, where, params, where_params = [], [], [], []
    for column in columns:
        low, high = _bounds(column)
        name = q(column.column)
        select.append(f"CAST({name} AS TEXT)")
        select.append(f"CASE WHEN {name} < %s THEN %s WHEN {name} > %s THEN %s ELSE {name} END")
        select.append(f"CASE WHEN {name} < %s OR {name} > %s THEN 1 ELSE 0 END")
        params += [low, low, high, high, low, high]
        where.append(f"{name} < %s OR {name} > %s")
        where_params += [low, high]
    period = PERIODS.get(model)
    if period:
        start, end = (q(model._meta.get_field(n).column) for n in period)
        where.append(f"{end} <= {start}")
    sql = (f"SELECT {q(model._meta.pk.column)}, {', '.join(select)} "
           f"FROM {q(model._meta.db_table)} WHERE {' OR '.join(f'({w})' for w in where)} "
           f"ORDER BY 1")
    with connection.cursor() as cursor:
        cursor.execute(sql, params + where_params)
        found = cursor.fetchall()
    rows = []
    for record in found:
        row = Row(model, record[0])
        for i, column in enumerate(columns):
            old, clamped, out = record[1 + 3 * i: 4 + 3 * i]
            row.old[column.name], row.new[column.name] = old, _readable(column, clamped)
            if out:
                row.bad.append(column.name)
        if period:
            _keep_period(row, *period)
        rows.append(row)
    return rows


def _keep_period(row: Row, start: str, end: str) -> None:
    """After clamping, an end must still come after its start: one day after it, or the
    period becomes the last day before the upper bound."""
    first, last = row.new[start], row.new[end]
    if first is None or last is None or last > first:
        return
    step = timedelta(days=1)
    high = inputs.DATE_MAX if isinstance(first, datetime) else inputs.DATE_MAX.date()
    if first + step <= high:
        row.new[end] = first + step
    else:
        row.new[start], row.new[end] = high - step, high
        if start not in row.bad:
            row.bad.append(start)
    if end not in row.bad:
        row.bad.append(end)


def fix_row(row: Row) -> None:
    """Write a row's repaired values in one UPDATE (CHECK constraints see the final row)."""
    q = connection.ops.quote_name
    fields = [row.model._meta.get_field(name) for name in row.bad]
    assignments = ", ".join(f"{q(f.column)} = %s" for f in fields)
    values = [connection.ops.adapt_datetimefield_value(row.new[f.name])
              if isinstance(f, models.DateTimeField)
              else connection.ops.adapt_datefield_value(row.new[f.name]) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {q(row.model._meta.db_table)} SET {assignments} "
                       f"WHERE {q(row.model._meta.pk.column)} = %s", [*values, row.pk])


class Command(BaseCommand):
    help = ("Find stored dates outside 1900-01-01..9999-01-01 and periods that do not end after "
            "they start (rows that break pages and tasks); --fix clamps them to the nearest "
            "bound and reports each change.")

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="Repair what is found.")

    def handle(self, *args, fix: bool = False, **options):
        found = 0
        for model in apps.get_models():
            if model._meta.proxy or not model._meta.managed:
                continue
            with transaction.atomic():
                for row in find_rows(model):
                    found += 1
                    for name in row.bad:
                        self.stdout.write(
                            f"fixed: {row.label} {name}: {row.old[name]} -> "
                            f"{row.new[name].isoformat()}" if fix else
                            f"found: {row.label} {name}: {row.old[name]} "
                            f"(--fix sets {row.new[name].isoformat()})")
                    if fix:
                        fix_row(row)
        if not found:
            self.stdout.write("check_data: no bad values found.")
        elif fix:
            self.stdout.write(f"check_data: {found} row(s) repaired.")
        else:
            raise CommandError(f"{found} row(s) hold values that break readers; "
                               "run check_data --fix to clamp them to the nearest bound.")
