"""Apply virt-who reports to the host→guest mapping, set-based (virt-who-api.md).

One code path for every mapping change — a 17,000-hypervisor report, a single reported
hypervisor, or an admin setting one host's guest list: the entries are staged in temporary
tables (COPY on PostgreSQL) and applied with a fixed number of statements, under the org's
transaction-level advisory lock, so concurrent reports of one org queue instead of deadlocking.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from hypervisors import stage
from hypervisors.models import GuestHostInterval, GuestId, Report
from orgs.models import Organization, System
from sam import inputs, locks
from sam.ids import new_id, normalize_guest_uuid, swapped_uuid
from sam.task_slots import TaskSlot
from subscriptions import services as subscriptions

log = logging.getLogger(__name__)
write_timeline_task = TaskSlot("hypervisors.tasks.write_timeline_task")  # tasks.py fills it

MAX_NAME = 250
MAX_ID = 255
MAX_GUEST_ID = 64
DIFF_LIMIT = 1000  # entries kept per list in a report's stored diff
NOT_PROVIDED = "Host to guest mapping was not provided for hypervisor update."
INVALID = "Invalid host to guest mapping was provided for hypervisor update."

DEFAULT_FACTS = {"uname.machine": "x86_64"}  # a hypervisor reported without facts

_SYSTEM = System._meta.db_table
_GUEST = GuestId._meta.db_table
_INTERVAL = GuestHostInterval._meta.db_table
_HV, _STAGED_GUEST, _TOUCHED = stage.STAGE_HV, stage.STAGE_GUEST, stage.STAGE_TOUCHED


class BadReport(ValueError):
    """The whole report is unusable (400 at the API)."""


# --- Parsing ----------------------------------------------------------------------------------

@dataclass
class Entry:
    """One reported hypervisor, cleaned. ``facts``/``guests`` None = absent (leave alone)."""

    hypervisor_id: str
    raw_id: str
    name: str | None = None
    facts: dict[str, str] | None = None
    guests: dict[str, dict[str, str]] | None = None
    error: str | None = None
    system_id: int | None = None  # preset: an admin edits this host's guest list directly


def load_body(raw: bytes | str | None) -> dict[str, Any]:
    """The JSON document of a check-in body, whatever the Content-Type said."""
    if raw is None or not raw.strip():
        raise BadReport(NOT_PROVIDED)
    data = parse_json(raw)
    if not isinstance(data, dict) or not isinstance(data.get("hypervisors"), list):
        raise BadReport(INVALID)
    return data


def parse_json(raw: bytes | str) -> Any:
    """JSON of a report; refused whole (400 at accept, never a FAILED job later) when it is
    malformed, nested beyond the parser's depth, or holds NUL or unpaired surrogates."""
    try:
        return inputs.loads(raw, "The report")
    except inputs.BadInput as exc:
        raise BadReport(f"{INVALID} {exc.text}") from None
    except (ValueError, UnicodeDecodeError):
        raise BadReport(INVALID) from None


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def clean_guests(guests: object, shared: dict[Any, dict[str, str]] | None = None
                 ) -> dict[str, dict[str, str]]:
    """Strings or ``{guestId, attributes}`` → uuid → attributes (strings). Empty ids are
    dropped; a UUID listed twice keeps its last attributes.

    ``shared``: cleaned attributes by their raw content, across the calls of one report. Most
    guests of a report carry the same few attribute sets; they then share one dict (cleaned
    once, and turned into JSON once by the apply)."""
    if not isinstance(guests, list):
        raise ValueError("guestIds must be a list")
    if shared is None:
        shared = {}
    cleaned: dict[str, dict[str, str]] = {}
    guest: Any
    attributes: Any
    for item in guests:
        if isinstance(item, str):
            guest, attributes = item, {}
        elif isinstance(item, dict):
            guest, attributes = item.get("guestId"), item.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise ValueError("guest attributes must be an object")
        else:
            raise ValueError("each guest must be a UUID string or an object")
        if guest is None:
            continue
        if not isinstance(guest, str):
            raise ValueError("guestId must be a string")
        guest = normalize_guest_uuid(guest)
        if not guest:
            continue
        if len(guest) > MAX_GUEST_ID:
            raise ValueError(f"guestId {guest[:70]!r} is longer than {MAX_GUEST_ID} characters")
        try:
            # With the types: 1, 1.0 and True are equal keys but clean to "1", "1.0", "true".
            key: Any = tuple((k, type(v), v) for k, v in attributes.items())
            clean = shared.get(key)
        except TypeError:  # a list or object among the values: not shared
            key, clean = None, None
        if clean is None:
            clean = {str(k): _text(v) for k, v in attributes.items()}
            if key is not None:
                shared[key] = clean
        cleaned[guest] = clean
    return cleaned


def parse_entries(data: dict[str, Any]) -> list[Entry]:
    """Entries of a check-in body. Entries without an id are skipped; for an id given twice
    the last entry wins. A malformed entry carries ``error`` and fails alone."""
    entries: dict[str, Entry] = {}
    shared: dict[Any, dict[str, str]] = {}
    for item in data.get("hypervisors") or []:
        if not isinstance(item, dict):
            continue
        wrapper = item.get("hypervisorId")
        raw_id = wrapper.get("hypervisorId") if isinstance(wrapper, dict) else None
        if not isinstance(raw_id, str) or not raw_id.strip():
            continue
        entry = Entry(hypervisor_id=normalize_guest_uuid(raw_id), raw_id=raw_id.strip())
        try:
            if len(entry.hypervisor_id) > MAX_ID:
                raise ValueError("hypervisor id is too long")
            name = item.get("name")
            if name is not None:
                entry.name = _text(name).strip()[:MAX_NAME] or None
            if item.get("facts") is not None:
                if not isinstance(item["facts"], dict):
                    raise ValueError("facts must be an object")
                entry.facts = {str(k): _text(v) for k, v in item["facts"].items()}
            if item.get("guestIds") is not None:
                entry.guests = clean_guests(item["guestIds"], shared)
        except ValueError as exc:
            entry.error = str(exc)
        entries.pop(entry.hypervisor_id, None)
        entries[entry.hypervisor_id] = entry
    return list(entries.values())


# --- Applying ---------------------------------------------------------------------------------

@dataclass
class Applied:
    """What one apply did: the resultData lists, the diff, who to re-resolve."""

    created: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    added: list[tuple[str, str]] = field(default_factory=list)  # (guest uuid, host hv id)
    removed: list[tuple[str, str]] = field(default_factory=list)
    moved: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # from → to
    resolved: list[int] = field(default_factory=list)
    system_ids: dict[str, int] = field(default_factory=dict)  # hv id → system id
    statuses: dict[str, str] = field(default_factory=dict)  # hv id → created/updated/...

    def result_data(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "failedUpdate": self.failed}

    def diff(self) -> dict[str, Any]:
        """The report's diff for history; long lists are capped (the full per-guest story is in
        the host timeline), counts are exact."""

        def cap(rows: Sequence[tuple[str, ...] | tuple[str, str | None, str | None]]
                ) -> list[list[str | None]]:
            return [list(r) for r in rows[:DIFF_LIMIT]]

        return {
            "hypervisors": {"created": [h["name"] for h in self.created[:DIFF_LIMIT]],
                            "updated": [h["name"] for h in self.updated[:DIFF_LIMIT]]},
            "guests": {"added": cap(self.added), "removed": cap(self.removed),
                       "moved": cap(self.moved)},
            "counts": {"hypervisors_created": len(self.created),
                       "hypervisors_updated": len(self.updated),
                       "guests_added": len(self.added), "guests_removed": len(self.removed),
                       "guests_moved": len(self.moved)},
        }


def identity(facts: dict[str, str]) -> dict[str, Any]:
    """Indexed copies of the facts that link guests to hosts and hardware to hypervisors."""
    is_guest = facts.get("virt.is_guest", "").strip().lower() == "true"
    virt = (normalize_guest_uuid(facts.get("virt.uuid", "")) or None) if is_guest else None
    return {
        "is_guest": is_guest,
        "virt_uuid": virt,
        "virt_uuid_swapped": swapped_uuid(virt) if virt else None,
        "dmi_uuid": normalize_guest_uuid(facts.get("dmi.system.uuid", "")) or None,
    }


def apply_entries(org: Organization, entries: list[Entry], *, reporter_id: str | None = None,
                  create_missing: bool = True, now: datetime | None = None,
                  report_id: int | None = None, source: str = "",
                  trigger: str = "report", org_locked: bool = False) -> Applied:
    """Apply reported hypervisors in one transaction under the org's report lock.

    ``org_locked``: the caller already holds that lock in its transaction (the worker claims
    the job under it), so it is not taken a second time. Registered guests that gained,
    changed or lost their current host are re-resolved after commit; a report that changes
    nothing enqueues nothing.
    """
    result = Applied()
    with transaction.atomic(), connection.cursor() as cursor:
        if not org_locked:
            locks.xact_lock(locks.ORG_REPORT, org.id)
        ctx = _Apply(cursor=cursor, sql=stage.dialect(), org=org, entries=entries,
                     reporter_id=reporter_id or None, create_missing=create_missing,
                     now=now or timezone.now(), report_id=report_id, source=source[:64],
                     result=result)
        ctx.sql.begin(cursor)
        ctx.sql.create_tables(cursor)
        try:
            _apply(ctx)
        finally:
            ctx.sql.drop_tables(cursor)
        subscriptions.enqueue_resolution(result.resolved, trigger)
    return result


@dataclass
class _Apply:
    """One apply in progress: its inputs, the SQL dialect, and what the steps found so far.
    Entries are known by their index in ``entries`` (the ``idx`` of the staging table)."""

    cursor: CursorWrapper
    sql: stage.Dialect
    org: Organization
    entries: list[Entry]
    reporter_id: str | None
    create_missing: bool
    now: datetime
    report_id: int | None
    source: str
    result: Applied
    failed: dict[int, str] = field(default_factory=dict)  # idx -> find / create / update
    system_of: dict[int, int] = field(default_factory=dict)  # idx -> system id (not failed)
    guest_changed_hosts: set[int] = field(default_factory=set)  # hosts whose guest list changed
    created: set[int] = field(default_factory=set)  # idx of the hypervisors created here
    newest_host: dict[str, int] | None = None  # guest UUID -> host, when known without a query

    def exists(self, sql: str, params: Sequence[Any] = ()) -> bool:
        self.cursor.execute(f"SELECT EXISTS ({sql})", params)
        return bool(self.cursor.fetchone()[0])

    def one_column(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.cursor.execute(sql, params)
        return [row[0] for row in self.cursor.fetchall()]


def _apply(ctx: _Apply) -> None:
    """The steps, in order; each is a fixed number of statements whatever the report's size."""
    _write_pending_first(ctx)
    _stage_hypervisors(ctx)
    _match_systems(ctx)
    _mark_failures(ctx)
    _create_hypervisors(ctx)
    _update_hypervisors(ctx)
    touched = _replace_guest_lists(ctx)
    if touched:
        _follow_guests(ctx, touched)
    if ctx.report_id is None:
        _clear_report_stamps(ctx)
    _collect_result(ctx)


def _stage_hypervisors(ctx: _Apply) -> None:
    """Every entry as a row of the hypervisor staging table."""
    sql = ctx.sql
    rows = []
    for idx, entry in enumerate(ctx.entries):
        facts = entry.facts if entry.facts is not None else DEFAULT_FACTS
        ident = identity(facts)
        rows.append((
            idx, entry.hypervisor_id, entry.name,
            (entry.name or entry.raw_id.lstrip("#") or entry.hypervisor_id)[:MAX_NAME],
            sql.boolean(entry.facts is not None), stage.json_value(facts),
            ident["dmi_uuid"] if entry.facts is not None else None,
            sql.boolean(ident["is_guest"]), ident["virt_uuid"], ident["virt_uuid_swapped"],
            sql.boolean(entry.guests is not None), sql.boolean(entry.system_id is not None),
            sql.uuid(new_id()), entry.system_id, None,
        ))
    sql.load(ctx.cursor, _HV, (
        "idx", "hv_id", "name", "create_name", "has_facts", "facts", "dmi", "is_guest",
        "virt_uuid", "virt_uuid_swapped", "has_guests", "keep_meta", "new_uuid", "system_id",
        "failed"), rows)
    sql.analyze(ctx.cursor, _HV)


def _match_systems(ctx: _Apply) -> None:
    """Known hypervisors: by hypervisor id, then by ``dmi.system.uuid`` (the newest system with
    that hardware)."""
    ctx.cursor.execute(
        f"UPDATE {_HV} SET system_id = s.id FROM {_SYSTEM} s WHERE s.org_id = %s "
        f"AND s.hypervisor_id = {_HV}.hv_id AND {_HV}.system_id IS NULL AND {_HV}.failed IS NULL",
        [ctx.org.id])
    ctx.cursor.execute(
        f"UPDATE {_HV} SET system_id = (SELECT s.id FROM {_SYSTEM} s WHERE s.org_id = %s "
        f"AND s.dmi_uuid = {_HV}.dmi ORDER BY s.updated DESC, s.id DESC LIMIT 1) "
        f"WHERE system_id IS NULL AND dmi IS NOT NULL AND failed IS NULL", [ctx.org.id])


def _mark_failures(ctx: _Apply) -> None:
    """Entries that fail alone: two matched to one system (the one whose id the system already
    has wins, else the last), unknown ones when ``create_missing`` is off, malformed ones."""
    ctx.cursor.execute(
        f"SELECT {_HV}.idx, {_HV}.system_id, s.hypervisor_id FROM {_HV} JOIN {_SYSTEM} s "
        f"ON s.id = {_HV}.system_id WHERE {_HV}.system_id IN (SELECT system_id FROM {_HV} "
        f"WHERE system_id IS NOT NULL GROUP BY system_id HAVING COUNT(*) > 1)")
    clashes: dict[int, list[tuple[int, str]]] = {}
    for idx, system_id, current in ctx.cursor.fetchall():
        clashes.setdefault(system_id, []).append((idx, current))
    for members in clashes.values():
        keep = next((i for i, cur in members if ctx.entries[i].hypervisor_id == cur),
                    max(members)[0])
        ctx.failed.update({idx: "update" for idx, _ in members if idx != keep})
    missing = set(ctx.one_column(f"SELECT idx FROM {_HV} WHERE system_id IS NULL "
                                 f"AND failed IS NULL"))
    if not ctx.create_missing:
        ctx.failed.update({idx: "find" for idx in missing})
    for idx, entry in enumerate(ctx.entries):
        if entry.error:
            ctx.failed.setdefault(idx, "create" if idx in missing else "update")
    if ctx.failed:
        ctx.cursor.executemany(f"UPDATE {_HV} SET failed = %s WHERE idx = %s",
                               [(kind, idx) for idx, kind in ctx.failed.items()])


def _create_hypervisors(ctx: _Apply) -> None:
    """Unknown hypervisors become systems (in hypervisor-id order: the insert order of
    concurrent applies never interleaves)."""
    if not ctx.create_missing:
        return
    t = ctx.sql.true
    ctx.cursor.execute(
        f"INSERT INTO {_SYSTEM} (uuid, org_id, type, name, facts, installed_products, is_guest,"
        f" virt_uuid, virt_uuid_swapped, dmi_uuid, hypervisor_id, reporter_id, autoheal,"
        f" last_checkin, registered_at, updated, written_by_report) "
        f"SELECT new_uuid, %s, 'hypervisor', create_name, facts, {ctx.sql.json_literal('[]')},"
        f" is_guest, virt_uuid, virt_uuid_swapped, dmi, hv_id, %s, {t}, %s, %s, %s, %s "
        f"FROM {_HV} WHERE system_id IS NULL AND failed IS NULL ORDER BY hv_id",
        [ctx.org.id, ctx.reporter_id, ctx.now, ctx.now, ctx.now, ctx.report_id])
    ctx.created = set(ctx.one_column(
        f"UPDATE {_HV} SET system_id = s.id, created = {t} FROM {_SYSTEM} s "
        f"WHERE s.org_id = %s AND s.hypervisor_id = {_HV}.hv_id AND {_HV}.system_id IS NULL "
        f"AND {_HV}.failed IS NULL RETURNING {_HV}.idx", [ctx.org.id]))


def _update_hypervisors(ctx: _Apply) -> None:
    """Known hypervisors: note what changed (for "updated"), then one UPDATE for all of them.

    A report stamps every hypervisor it lists (the identical-report shortcut); that column is
    not indexed, so the rewrite stays a HOT update like the check-in time beside it."""
    sql, t, f = ctx.sql, ctx.sql.true, ctx.sql.false
    listed = f"{_HV}.created = {f} AND {_HV}.keep_meta = {f} AND {_HV}.failed IS NULL"
    ctx.cursor.execute(
        f"UPDATE {_HV} SET changed = ("
        f"({_HV}.name IS NOT NULL AND {_HV}.name <> s.name) "
        f"OR ({_HV}.has_facts = {t} AND {sql.distinct(f'{_HV}.facts', 's.facts', json=True)}) "
        f"OR s.type <> 'hypervisor' OR {sql.distinct('s.hypervisor_id', f'{_HV}.hv_id')}) "
        f"FROM {_SYSTEM} s WHERE s.id = {_HV}.system_id AND {listed}")

    def from_facts(column: str, staged: str) -> str:
        return (f"{column} = CASE WHEN {_HV}.has_facts = {t} THEN {_HV}.{staged} "
                f"ELSE {_SYSTEM}.{column} END")

    ctx.cursor.execute(
        f"UPDATE {_SYSTEM} SET name = COALESCE({_HV}.name, {_SYSTEM}.name), "
        f"{from_facts('facts', 'facts')}, {from_facts('is_guest', 'is_guest')}, "
        f"{from_facts('virt_uuid', 'virt_uuid')}, "
        f"{from_facts('virt_uuid_swapped', 'virt_uuid_swapped')}, "
        f"{from_facts('dmi_uuid', 'dmi')}, "
        f"type = 'hypervisor', hypervisor_id = {_HV}.hv_id, "
        f"reporter_id = COALESCE(%s, {_SYSTEM}.reporter_id), last_checkin = %s, "
        f"updated = CASE WHEN {_HV}.changed = {t} THEN %s ELSE {_SYSTEM}.updated END, "
        f"written_by_report = %s "
        f"FROM {_HV} WHERE {_SYSTEM}.id = {_HV}.system_id AND {listed}",
        [ctx.reporter_id, ctx.now, ctx.now, ctx.report_id])
    ctx.cursor.execute(f"SELECT idx, system_id FROM {_HV} WHERE failed IS NULL")
    ctx.system_of = dict(ctx.cursor.fetchall())


def _replace_guest_lists(ctx: _Apply) -> list[str]:
    """Complete guest lists replace the stored ones (absent ``guestIds``: untouched). Returns
    the guest UUIDs whose rows were removed, changed or added."""
    cursor, sql, t = ctx.cursor, ctx.sql, ctx.sql.true
    as_json: dict[int, str] = {}  # by id(): most guests share a few attribute dicts
    rows = []
    replaced_existing = False  # a host that existed before this apply: it may have guest rows
    for idx, entry in enumerate(ctx.entries):
        if entry.guests is None or idx not in ctx.system_of:
            continue
        system_id = ctx.system_of[idx]
        replaced_existing = replaced_existing or idx not in ctx.created
        for guest, attributes in entry.guests.items():
            text = as_json.get(id(attributes))
            if text is None:
                text = as_json[id(attributes)] = stage.json_value(attributes)
            rows.append((system_id, guest, text))
    if rows:
        sql.load(cursor, _STAGED_GUEST, ("system_id", "guest_uuid", "attributes"), rows)
        if replaced_existing:  # joined with the stored rows below; new hosts' rows are not
            sql.analyze(cursor, _STAGED_GUEST)
    sg = _STAGED_GUEST
    # An org without guest rows yet (its first report): the current host of a UUID is the one
    # this report lists it on (the newest row of those inserted below), no query needed.
    first_rows = not ctx.exists(f"SELECT 1 FROM {_GUEST} WHERE org_id = %s", [ctx.org.id])
    removed: list[tuple[Any, ...]] = []
    changed: list[tuple[Any, ...]] = []
    if replaced_existing:  # hosts created here have no guest rows to drop or change
        cursor.execute(
            f"DELETE FROM {_GUEST} WHERE host_id IN (SELECT system_id FROM {_HV} "
            f"WHERE has_guests = {t} AND failed IS NULL) AND NOT EXISTS (SELECT 1 FROM {sg} "
            f"WHERE {sg}.system_id = {_GUEST}.host_id "
            f"AND {sg}.guest_uuid = {_GUEST}.guest_uuid) RETURNING host_id, guest_uuid")
        removed = cursor.fetchall()
        cursor.execute(
            f"UPDATE {_GUEST} SET attributes = {sg}.attributes, updated = %s FROM {sg} "
            f"WHERE {_GUEST}.host_id = {sg}.system_id AND {_GUEST}.guest_uuid = {sg}.guest_uuid "
            f"AND {sql.distinct(f'{_GUEST}.attributes', f'{sg}.attributes', json=True)} "
            f"RETURNING {_GUEST}.host_id, {_GUEST}.guest_uuid", [ctx.now])
        changed = cursor.fetchall()
    # In key order, so that two applies never wait on each other's unique-index entries in
    # opposite orders.
    new_rows = (f"WHERE NOT EXISTS (SELECT 1 FROM {_GUEST} g WHERE g.host_id = {sg}.system_id "
                f"AND g.guest_uuid = {sg}.guest_uuid) " if replaced_existing else "")
    cursor.execute(
        f"INSERT INTO {_GUEST} (org_id, host_id, guest_uuid, attributes, created, updated) "
        f"SELECT %s, {sg}.system_id, {sg}.guest_uuid, {sg}.attributes, %s, %s FROM {sg} "
        f"{new_rows}ORDER BY {sg}.system_id, {sg}.guest_uuid "
        f"RETURNING id, host_id, guest_uuid", [ctx.org.id, ctx.now, ctx.now])
    added_rows = cursor.fetchall()
    added = [(h, g) for _, h, g in added_rows]
    if first_rows and not removed and not changed:
        # Same order as the query it replaces: newest ``updated`` (all now), then highest id.
        ctx.newest_host = {g: h for _, h, g in sorted(added_rows)}
    hv_of_system = {system_id: ctx.entries[idx].hypervisor_id
                    for idx, system_id in ctx.system_of.items()}
    ctx.result.removed = sorted((g, hv_of_system.get(h, "")) for h, g in removed)
    ctx.result.added = sorted((g, hv_of_system.get(h, "")) for h, g in added)
    ctx.guest_changed_hosts = {h for h, _ in removed} | {h for h, _ in changed} | {
        h for h, _ in added}
    return sorted({g for _, g in removed} | {g for _, g in changed} | {g for _, g in added})


def _follow_guests(ctx: _Apply, touched: list[str]) -> None:
    """Current host of each touched guest UUID, its timeline, and registered guests' host."""
    cursor, org, st = ctx.cursor, ctx.org, _TOUCHED
    if ctx.newest_host is not None:  # nothing stored to join with: no ANALYZE either
        ctx.sql.load(cursor, st, ("guest_uuid", "host_id"),
                     [(g, ctx.newest_host[g]) for g in touched])
    else:
        ctx.sql.load(cursor, st, ("guest_uuid",), [(g,) for g in touched])
        ctx.sql.analyze(cursor, st)
        # Newest row wins (served by guestid_org_guest_upd_idx).
        cursor.execute(ctx.sql.newest_host_sql(st, _GUEST), [org.id])
    # The open stay of each touched UUID: one probe of guestinterval_one_open_uniq per UUID.
    # Correlated subqueries on purpose: written as an anti-join, a plan made from stale
    # statistics (an org that just grew) scanned all the org's open stays once per guest:
    # 5 s for 1,000 moved guests of a 20,000-guest org, 32 s on the large report.
    open_stay = (f"FROM {_INTERVAL} i WHERE i.org_id = %s AND i.guest_uuid = {st}.guest_uuid "
                 f"AND i.ended IS NULL")
    has_stays = ctx.exists(f"SELECT 1 FROM {_INTERVAL} WHERE org_id = %s", [org.id])
    if has_stays:  # else none open
        cursor.execute(f"UPDATE {st} SET open_id = (SELECT i.id {open_stay}), "
                       f"open_host = (SELECT i.host_id {open_stay})", [org.id, org.id])
    # Timeline: close the open stay where the host changed, open the new one.
    moves = (f"{st}.open_id IS NOT NULL AND ({st}.host_id IS NULL OR {st}.open_host IS NULL "
             f"OR {st}.open_host <> {st}.host_id)")
    if ctx.report_id is not None and len(touched) >= settings.SAM_TIMELINE_DEFER_GUESTS:
        left, arrived = _defer_timeline(ctx, moves, has_stays)
    else:
        cursor.execute(
            f"UPDATE {_INTERVAL} SET ended = %s FROM {st} WHERE {_INTERVAL}.id = {st}.open_id "
            f"AND {moves} RETURNING {_INTERVAL}.guest_uuid, {_INTERVAL}.host_hypervisor_id",
            [ctx.now])
        left = dict(cursor.fetchall())
        cursor.execute(
            f"INSERT INTO {_INTERVAL} (org_id, guest_uuid, host_id, host_name, host_hypervisor_id,"
            f" started, ended, source, report_id) "
            f"SELECT %s, {st}.guest_uuid, {st}.host_id, s.name, COALESCE(s.hypervisor_id, ''), %s,"
            f" NULL, %s, %s FROM {st} JOIN {_SYSTEM} s ON s.id = {st}.host_id "
            f"WHERE {st}.open_id IS NULL OR ({moves}) "
            f"RETURNING guest_uuid, host_hypervisor_id",
            [org.id, ctx.now, ctx.source, ctx.report_id])
        arrived = dict(cursor.fetchall())
    ctx.result.moved = sorted((g, left[g], arrived[g]) for g in set(left) & set(arrived))
    # Registered guests with these UUIDs (either byte order) follow their newest host.
    t = ctx.sql.true
    guest_ids = sorted(ctx.one_column(
        f"SELECT s.id FROM {_SYSTEM} s JOIN {st} ON s.virt_uuid = {st}.guest_uuid "
        f"WHERE s.org_id = %s AND s.is_guest = {t} UNION "
        f"SELECT s.id FROM {_SYSTEM} s JOIN {st} ON s.virt_uuid_swapped = {st}.guest_uuid "
        f"WHERE s.org_id = %s AND s.is_guest = {t}", [org.id, org.id]))
    # Only guests whose host changed have new inputs: an attribute change (or a second host
    # listing a guest that keeps its newest host) resolves nobody.
    ctx.result.resolved = refresh_current_hosts_of(org, guest_ids, ctx.now)


# --- Deferred timeline ----------------------------------------------------------------------------

def _defer_timeline(ctx: _Apply, moves: str, has_stays: bool
                    ) -> tuple[dict[str, str], dict[str, str]]:
    """A large report's timeline rows, kept on the report instead of written here.

    Writing 20,000 timeline rows, their five index entries and three foreign-key checks each
    is a third of a large first report's apply. The apply only reads which stays close and
    open (the job's "moved" list needs that); the rows are written right after commit by
    ``write_pending_timelines``, under the same org lock, and before any later apply of the
    org, which starts by writing what is pending: the timeline never misses a step, and a
    crash in between leaves the entries on the report for the next apply or the sweep.
    Returns (guest → host it left, guest → host it arrived on), as the direct writes do."""
    cursor, st = ctx.cursor, _TOUCHED
    if ctx.newest_host is not None and not has_stays:  # an org's first report: no query
        stays = [(g, h, None, None) for g, h in ctx.newest_host.items()]
    else:
        cursor.execute(f"SELECT guest_uuid, host_id, open_id, open_host FROM {st}")
        stays = cursor.fetchall()
    left: dict[str, str] = {}
    if has_stays:
        cursor.execute(f"SELECT {st}.guest_uuid, i.host_hypervisor_id FROM {st} "
                       f"JOIN {_INTERVAL} i ON i.id = {st}.open_id WHERE {moves}")
        left = dict(cursor.fetchall())
    cursor.execute(f"SELECT id, name, COALESCE(hypervisor_id, '') FROM {_SYSTEM} WHERE id IN "
                   f"(SELECT DISTINCT host_id FROM {st} WHERE host_id IS NOT NULL)")
    hosts = {host_id: [name, hv] for host_id, name, hv in cursor.fetchall()}
    arrived: dict[str, str] = {}
    rows: list[list[Any]] = []
    for guest, host_id, open_id, open_host in stays:
        moved = open_id is not None and (host_id is None or open_host != host_id)
        opens = (open_id is None or moved) and host_id in hosts
        if opens:
            arrived[guest] = hosts[host_id][1]
        if moved or opens:
            rows.append([guest, open_id if moved else None, host_id if opens else None])
    if rows and ctx.report_id is not None:
        entries = {"at": ctx.now.isoformat(), "source": ctx.source, "hosts": hosts, "rows": rows}
        Report.objects.filter(pk=ctx.report_id).update(
            timeline=zlib.compress(json.dumps(entries).encode(), 1))
        org_id = ctx.org.id
        transaction.on_commit(lambda: send_timeline(org_id))
    return left, arrived


def send_timeline(org_id: int) -> None:
    """Hand the org's pending timeline to a worker (after commit, and from the sweep)."""
    write_timeline_task.delay_or_leave(org_id, waiting=f"org {org_id}: timeline stays pending")


def write_pending_timelines(org_id: int) -> int:
    """Write the org's deferred timeline entries (the task after a large report's apply, and
    the sweep). Returns how many reports' entries were written."""
    with transaction.atomic(), connection.cursor() as cursor:
        locks.xact_lock(locks.ORG_REPORT, org_id)
        sql = stage.dialect()
        sql.begin(cursor)
        try:
            return _write_timelines(cursor, sql, org_id)
        finally:
            sql.drop_tables(cursor)


def _write_timelines(cursor: CursorWrapper, sql: stage.Dialect, org_id: int) -> int:
    """Under the org's report lock: each pending report's entries, oldest first. A host
    deleted meanwhile is left out of the link (``host`` null), as deletion does to stays."""
    pending = list(Report.objects.filter(org_id=org_id, timeline__isnull=False)
                   .order_by("id").values_list("id", "timeline"))
    if not pending:
        return 0
    tl = stage.STAGE_TIMELINE
    for report_id, blob in pending:
        entries = json.loads(zlib.decompress(bytes(blob)))
        hosts = {int(k): v for k, v in entries["hosts"].items()}
        sql.create_timeline_table(cursor)
        sql.load(cursor, tl, ("guest_uuid", "close_id", "host_id", "host_name",
                              "host_hypervisor_id"),
                 [(guest, close_id, host_id, *(hosts[host_id] if host_id is not None
                                               else (None, None)))
                  for guest, close_id, host_id in entries["rows"]])
        at = datetime.fromisoformat(entries["at"])
        cursor.execute(
            f"UPDATE {_INTERVAL} SET ended = %s FROM {tl} WHERE {_INTERVAL}.id = {tl}.close_id "
            f"AND {_INTERVAL}.ended IS NULL", [at])
        # A guest that has an open stay again is left as it is (never two open stays): the
        # entries are written before anything else touches the org's stays, so this does not
        # happen; if it ever did, one stale entry must not block every later apply of the org.
        cursor.execute(
            f"INSERT INTO {_INTERVAL} (org_id, guest_uuid, host_id, host_name, host_hypervisor_id,"
            f" started, ended, source, report_id) "
            f"SELECT %s, {tl}.guest_uuid, s.id, {tl}.host_name, {tl}.host_hypervisor_id, %s, "
            f"NULL, %s, %s FROM {tl} LEFT JOIN {_SYSTEM} s ON s.id = {tl}.host_id "
            f"WHERE {tl}.host_name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {_INTERVAL} i "
            f"WHERE i.org_id = %s AND i.guest_uuid = {tl}.guest_uuid AND i.ended IS NULL) "
            f"ORDER BY {tl}.guest_uuid",
            [org_id, at, entries["source"], report_id, org_id])
        opened = sum(1 for row in entries["rows"] if row[2] is not None)
        if cursor.rowcount != opened:
            log.warning("report %s: %s of %s deferred stays not opened (the guest had an open "
                        "stay already)", report_id, opened - cursor.rowcount, opened)
        Report.objects.filter(pk=report_id).update(timeline=None)
    return len(pending)


def _write_pending_first(ctx: _Apply) -> None:
    """Before an apply reads the open stays: what an earlier report deferred is written."""
    if Report.objects.filter(org_id=ctx.org.id, timeline__isnull=False).exists():
        _write_timelines(ctx.cursor, ctx.sql, ctx.org.id)


def _clear_report_stamps(ctx: _Apply) -> None:
    """Not a virt-who report: ``_update_hypervisors`` cleared the stamp of the hypervisors it
    listed; a guest list set directly (admin, deletion) clears it where it changed something."""
    kept = {ctx.system_of[i] for i, e in enumerate(ctx.entries)
            if i in ctx.system_of and e.system_id is not None}
    invalidate_report_shortcut(kept & ctx.guest_changed_hosts)


def _collect_result(ctx: _Apply) -> None:
    """resultData: created / updated / unchanged / failedUpdate, in report order."""
    result, org_key = ctx.result, ctx.org.key
    ctx.cursor.execute(
        f"SELECT {_HV}.idx, s.uuid, s.name, {_HV}.created, {_HV}.changed, {_HV}.system_id "
        f"FROM {_HV} JOIN {_SYSTEM} s ON s.id = {_HV}.system_id WHERE {_HV}.failed IS NULL "
        f"ORDER BY {_HV}.idx")
    for idx, uuid, name, created, changed_meta, system_id in ctx.cursor.fetchall():
        item = {"uuid": _uuid_text(uuid), "name": name, "owner": {"key": org_key}}
        hv_id = ctx.entries[idx].hypervisor_id
        result.system_ids[hv_id] = system_id
        if created:
            result.created.append(item)
            result.statuses[hv_id] = "created"
        elif changed_meta or system_id in ctx.guest_changed_hosts:
            result.updated.append(item)
            result.statuses[hv_id] = "updated"
        else:
            result.unchanged.append(item)
            result.statuses[hv_id] = "unchanged"
    for idx, kind in sorted(ctx.failed.items()):
        entry = ctx.entries[idx]
        result.failed.append(f"{entry.raw_id}: Unable to {kind} hypervisor with id "
                             f"{entry.raw_id} in org {org_key}")
        result.statuses[entry.hypervisor_id] = "missing" if kind == "find" else "failed"


def _uuid_text(value: object) -> str:
    text = str(value)
    if len(text) == 32:  # SQLite stores UUIDField as hex
        text = f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return text


# --- The identical-report shortcut ---------------------------------------------------------------

def invalidate_report_shortcut(system_ids: Iterable[int]) -> int:
    """Something other than a virt-who report wrote these hypervisors or their guest lists.

    The identical-report shortcut (virt-who-api.md) holds only while every hypervisor a
    reporter's last applied report wrote still carries that report's id; clearing it makes
    that reporter's next report apply in full, even with the same bytes. Call it in the
    writer's transaction: editing a hypervisor's name or facts, setting its guest list,
    registration taking the row over. (Deleting a row needs no call: it is simply missing.)
    Reports themselves re-stamp what they write, so another reporter's report or a merge by
    ``dmi.system.uuid`` invalidates the previous writer without calling this.
    """
    ids = sorted({int(i) for i in system_ids})
    cleared = 0
    for start in range(0, len(ids), 5000):
        cleared += System.objects.filter(id__in=ids[start:start + 5000],
                                         written_by_report__isnull=False
                                         ).update(written_by_report=None)
    return cleared


def report_still_written(org: Organization, reporter_id: str, report_id: int,
                         written: int | None) -> bool:
    """True while the ``written`` hypervisors report ``report_id`` wrote all still carry its id
    (nothing else wrote them since). One count over the reporter's hypervisors (served by
    ``system_org_reporter_idx``)."""
    if written is None:
        return False
    rows = System.objects.filter(org=org, written_by_report=report_id)
    if reporter_id:
        rows = rows.filter(reporter_id=reporter_id)
    return rows.count() == written


# --- Current host -----------------------------------------------------------------------------

def _newest_host(org_id: int) -> Subquery:
    """Subquery: the host of the most recently written guest-id row matching a system's
    ``virt.uuid`` in either byte order (served by ``guestid_org_guest_upd_idx``)."""
    return Subquery(
        GuestId.objects.filter(org_id=org_id)
        .filter(Q(guest_uuid=OuterRef("virt_uuid")) | Q(guest_uuid=OuterRef("virt_uuid_swapped")))
        .order_by("-updated", "-id").values("host_id")[:1]
    )


def refresh_current_hosts_of(org: Organization, system_ids: list[int], now: datetime) -> list[int]:
    """Recompute ``current_host`` of these registered guests: one SELECT of those whose host
    changes and two UPDATEs, in chunks that fit any backend's parameter limit. Returns the
    guests that gained, changed or lost their host (the ones to re-resolve)."""
    moved: list[int] = []
    for start in range(0, len(system_ids), 5000):
        chunk = system_ids[start:start + 5000]
        rows = list(System.objects.filter(id__in=chunk, is_guest=True)
                    .annotate(new_host=_newest_host(org.id))
                    .values_list("id", "current_host_id", "new_host"))
        gained = [gid for gid, old, new in rows if new is not None and new != old]
        lost = [gid for gid, old, new in rows if new is None and old is not None]
        if gained:
            System.objects.filter(id__in=gained).update(
                current_host=_newest_host(org.id), host_unknown_since=None)
        if lost:
            System.objects.filter(id__in=lost).update(current_host=None, host_unknown_since=now)
        moved += gained + lost
    return sorted(moved)


def guests_with_uuids(org: Organization, uuids: Iterable[str]) -> list[int]:
    """Registered guests whose ``virt.uuid`` is one of ``uuids`` in either byte order."""
    wanted = sorted({normalize_guest_uuid(u) for u in uuids if u})
    ids: set[int] = set()
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start:start + 5000]
        ids |= set(System.objects.filter(org=org, is_guest=True)
                   .filter(Q(virt_uuid__in=chunk) | Q(virt_uuid_swapped__in=chunk))
                   .values_list("id", flat=True))
    return sorted(ids)
