"""Apply virt-who reports to the host→guest mapping, set-based (virt-who-api.md).

One code path for every mapping change — a 17,000-hypervisor report, a single reported
hypervisor, or an admin setting one host's guest list: the entries are staged in temporary
tables (COPY on PostgreSQL) and applied with a fixed number of statements, under the org's
transaction-level advisory lock, so concurrent reports of one org queue instead of deadlocking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from hypervisors import stage
from hypervisors.models import GuestHostInterval, GuestId
from orgs.models import Organization, System
from sam import locks
from sam.ids import new_id, normalize_guest_uuid, swapped_uuid
from subscriptions import services as subscriptions

MAX_NAME = 250
MAX_ID = 255
MAX_GUEST_ID = 64
DIFF_LIMIT = 1000  # entries kept per list in a report's stored diff
NOT_PROVIDED = "Host to guest mapping was not provided for hypervisor update."
INVALID = "Invalid host to guest mapping was provided for hypervisor update."

_SYSTEM = System._meta.db_table
_GUEST = GuestId._meta.db_table
_INTERVAL = GuestHostInterval._meta.db_table


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


def load_body(raw: bytes | str) -> dict:
    """The JSON document of a check-in body, whatever the Content-Type said."""
    if raw is None or not raw.strip():
        raise BadReport(NOT_PROVIDED)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadReport(INVALID) from None
    if not isinstance(data, dict) or not isinstance(data.get("hypervisors"), list):
        raise BadReport(INVALID)
    return data


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def clean_guests(guests) -> dict[str, dict[str, str]]:
    """Strings or ``{guestId, attributes}`` → uuid → attributes (strings). Empty ids are
    dropped; a UUID listed twice keeps its last attributes."""
    if not isinstance(guests, list):
        raise ValueError("guestIds must be a list")
    cleaned: dict[str, dict[str, str]] = {}
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
        cleaned[guest] = {str(k): _text(v) for k, v in attributes.items()}
    return cleaned


def parse_entries(data: dict) -> list[Entry]:
    """Entries of a check-in body. Entries without an id are skipped; for an id given twice
    the last entry wins. A malformed entry carries ``error`` and fails alone."""
    entries: dict[str, Entry] = {}
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
                entry.guests = clean_guests(item["guestIds"])
        except ValueError as exc:
            entry.error = str(exc)
        entries.pop(entry.hypervisor_id, None)
        entries[entry.hypervisor_id] = entry
    return list(entries.values())


# --- Applying ---------------------------------------------------------------------------------

@dataclass
class Applied:
    """What one apply did: the resultData lists, the diff, who to re-resolve."""

    created: list[dict] = field(default_factory=list)
    updated: list[dict] = field(default_factory=list)
    unchanged: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    added: list[tuple[str, str]] = field(default_factory=list)  # (guest uuid, host hv id)
    removed: list[tuple[str, str]] = field(default_factory=list)
    moved: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # from → to
    resolved: list[int] = field(default_factory=list)
    system_ids: dict[str, int] = field(default_factory=dict)  # hv id → system id
    statuses: dict[str, str] = field(default_factory=dict)  # hv id → created/updated/...

    def result_data(self) -> dict:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "failedUpdate": self.failed}

    def diff(self) -> dict:
        """The report's diff for history; long lists are capped (the full per-guest story is in
        the host timeline), counts are exact."""

        def cap(rows):
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


def identity(facts: dict[str, str]) -> dict:
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
                  trigger: str = "report") -> Applied:
    """Apply reported hypervisors in one transaction under the org's report lock.

    Registered guests whose host changed get ``current_host`` updated and are re-resolved
    after commit; a report that changes nothing enqueues nothing.
    """
    now = now or timezone.now()
    result = Applied()
    with transaction.atomic(), connection.cursor() as cursor:
        locks.xact_lock(locks.ORG_REPORT, org.id)
        stage.create_tables(cursor)
        try:
            _apply(cursor, org, entries, reporter_id, create_missing, now, report_id, source,
                   result)
        finally:
            stage.drop_tables(cursor)
        subscriptions.enqueue_resolution(result.resolved, trigger)
    return result


def _apply(cursor, org, entries, reporter_id, create_missing, now, report_id, source,
           result: Applied) -> None:
    by_idx: dict[int, Entry] = {}
    rows = []
    for idx, entry in enumerate(entries):
        by_idx[idx] = entry
        facts = entry.facts if entry.facts is not None else {"uname.machine": "x86_64"}
        ident = identity(facts)
        rows.append((
            idx, entry.hypervisor_id, entry.name,
            (entry.name or entry.raw_id.lstrip("#") or entry.hypervisor_id)[:MAX_NAME],
            stage.bool_value(entry.facts is not None), stage.json_value(facts),
            ident["dmi_uuid"] if entry.facts is not None else None,
            stage.bool_value(ident["is_guest"]), ident["virt_uuid"], ident["virt_uuid_swapped"],
            stage.bool_value(entry.guests is not None), stage.bool_value(entry.system_id is not None),
            stage.uuid_value(new_id()), entry.system_id, None,
        ))
    stage.load(cursor, stage.STAGE_HV, (
        "idx", "hv_id", "name", "create_name", "has_facts", "facts", "dmi", "is_guest",
        "virt_uuid", "virt_uuid_swapped", "has_guests", "keep_meta", "new_uuid", "system_id",
        "failed"), rows)
    stage.analyze(cursor, stage.STAGE_HV)
    hv, t, f = stage.STAGE_HV, stage.true(), stage.false()
    org_key = org.key

    # 1. Match by hypervisor id, then by dmi.system.uuid (newest system with that hardware).
    cursor.execute(
        f"UPDATE {hv} SET system_id = s.id FROM {_SYSTEM} s WHERE s.org_id = %s "
        f"AND s.hypervisor_id = {hv}.hv_id AND {hv}.system_id IS NULL AND {hv}.failed IS NULL",
        [org.id])
    cursor.execute(
        f"UPDATE {hv} SET system_id = (SELECT s.id FROM {_SYSTEM} s WHERE s.org_id = %s "
        f"AND s.dmi_uuid = {hv}.dmi ORDER BY s.updated DESC, s.id DESC LIMIT 1) "
        f"WHERE system_id IS NULL AND dmi IS NOT NULL AND failed IS NULL", [org.id])

    # Two entries matched to one system (e.g. by id and by hardware): the one whose id the
    # system already has wins, else the last; the others fail alone.
    cursor.execute(
        f"SELECT {hv}.idx, {hv}.system_id, s.hypervisor_id FROM {hv} JOIN {_SYSTEM} s "
        f"ON s.id = {hv}.system_id WHERE {hv}.system_id IN (SELECT system_id FROM {hv} "
        f"WHERE system_id IS NOT NULL GROUP BY system_id HAVING COUNT(*) > 1)")
    clashes: dict[int, list[tuple[int, str]]] = {}
    for idx, system_id, current in cursor.fetchall():
        clashes.setdefault(system_id, []).append((idx, current))
    failed_idx: dict[int, str] = {}
    for members in clashes.values():
        keep = next((i for i, cur in members if by_idx[i].hypervisor_id == cur), max(members)[0])
        for idx, _ in members:
            if idx != keep:
                failed_idx[idx] = "update"

    # 2. Unknown hypervisors: created, or failed with create_missing=false.
    cursor.execute(f"SELECT idx FROM {hv} WHERE system_id IS NULL AND failed IS NULL")
    missing = [row[0] for row in cursor.fetchall()]
    if not create_missing:
        failed_idx.update({idx: "find" for idx in missing})
    for idx, entry in by_idx.items():
        if entry.error:
            failed_idx.setdefault(idx, "create" if idx in missing else "update")
    if failed_idx:
        cursor.executemany(f"UPDATE {hv} SET failed = %s WHERE idx = %s",
                           [(kind, idx) for idx, kind in failed_idx.items()])
    if create_missing:
        cursor.execute(
            f"INSERT INTO {_SYSTEM} (uuid, org_id, type, name, facts, installed_products, is_guest,"
            f" virt_uuid, virt_uuid_swapped, dmi_uuid, hypervisor_id, reporter_id, autoheal,"
            f" last_checkin, registered_at, updated) "
            f"SELECT new_uuid, %s, 'hypervisor', create_name, facts, {stage.json_literal('[]')},"
            f" is_guest, virt_uuid, virt_uuid_swapped, dmi, hv_id, %s, {t}, %s, %s, %s FROM {hv} "
            f"WHERE system_id IS NULL AND failed IS NULL ORDER BY hv_id",
            [org.id, reporter_id or None, now, now, now])
        cursor.execute(
            f"UPDATE {hv} SET system_id = s.id, created = {t} FROM {_SYSTEM} s "
            f"WHERE s.org_id = %s AND s.hypervisor_id = {hv}.hv_id AND {hv}.system_id IS NULL "
            f"AND {hv}.failed IS NULL", [org.id])

    # 3. Existing hypervisors: what changed (for "updated"), then one UPDATE for all of them.
    cursor.execute(
        f"UPDATE {hv} SET changed = ("
        f"({hv}.name IS NOT NULL AND {hv}.name <> s.name) "
        f"OR ({hv}.has_facts = {t} AND {stage.distinct(f'{hv}.facts', 's.facts', json=True)}) "
        f"OR s.type <> 'hypervisor' OR {stage.distinct('s.hypervisor_id', f'{hv}.hv_id')}) "
        f"FROM {_SYSTEM} s WHERE s.id = {hv}.system_id AND {hv}.created = {f} "
        f"AND {hv}.keep_meta = {f} AND {hv}.failed IS NULL")
    cursor.execute(
        f"UPDATE {_SYSTEM} SET "
        f"name = COALESCE({hv}.name, {_SYSTEM}.name), "
        f"facts = CASE WHEN {hv}.has_facts = {t} THEN {hv}.facts ELSE {_SYSTEM}.facts END, "
        f"is_guest = CASE WHEN {hv}.has_facts = {t} THEN {hv}.is_guest ELSE {_SYSTEM}.is_guest END,"
        f" virt_uuid = CASE WHEN {hv}.has_facts = {t} THEN {hv}.virt_uuid "
        f"ELSE {_SYSTEM}.virt_uuid END, "
        f"virt_uuid_swapped = CASE WHEN {hv}.has_facts = {t} THEN {hv}.virt_uuid_swapped "
        f"ELSE {_SYSTEM}.virt_uuid_swapped END, "
        f"dmi_uuid = CASE WHEN {hv}.has_facts = {t} THEN {hv}.dmi ELSE {_SYSTEM}.dmi_uuid END, "
        f"type = 'hypervisor', hypervisor_id = {hv}.hv_id, "
        f"reporter_id = COALESCE(%s, {_SYSTEM}.reporter_id), last_checkin = %s, "
        f"updated = CASE WHEN {hv}.changed = {t} THEN %s ELSE {_SYSTEM}.updated END "
        f"FROM {hv} WHERE {_SYSTEM}.id = {hv}.system_id AND {hv}.created = {f} "
        f"AND {hv}.keep_meta = {f} AND {hv}.failed IS NULL",
        [reporter_id or None, now, now])

    cursor.execute(f"SELECT idx, system_id FROM {hv} WHERE failed IS NULL")
    system_of = {idx: system_id for idx, system_id in cursor.fetchall()}
    hv_of_system = {system_of[i]: by_idx[i].hypervisor_id for i in system_of}

    # 4. Guest lists: complete lists replace the stored ones (absent guestIds: untouched).
    guest_rows = [
        (system_of[idx], guest, stage.json_value(attributes))
        for idx, entry in by_idx.items()
        if idx in system_of and entry.guests is not None
        for guest, attributes in sorted(entry.guests.items())
    ]
    if guest_rows:
        stage.load(cursor, stage.STAGE_GUEST, ("system_id", "guest_uuid", "attributes"),
                   guest_rows)
        stage.analyze(cursor, stage.STAGE_GUEST)
    sg = stage.STAGE_GUEST
    cursor.execute(
        f"DELETE FROM {_GUEST} WHERE host_id IN (SELECT system_id FROM {hv} WHERE has_guests = {t}"
        f" AND failed IS NULL) AND NOT EXISTS (SELECT 1 FROM {sg} WHERE {sg}.system_id = "
        f"{_GUEST}.host_id AND {sg}.guest_uuid = {_GUEST}.guest_uuid) "
        f"RETURNING host_id, guest_uuid")
    removed = cursor.fetchall()
    cursor.execute(
        f"UPDATE {_GUEST} SET attributes = {sg}.attributes, updated = %s FROM {sg} "
        f"WHERE {_GUEST}.host_id = {sg}.system_id AND {_GUEST}.guest_uuid = {sg}.guest_uuid "
        f"AND {stage.distinct(f'{_GUEST}.attributes', f'{sg}.attributes', json=True)} "
        f"RETURNING {_GUEST}.host_id, {_GUEST}.guest_uuid", [now])
    changed = cursor.fetchall()
    cursor.execute(
        f"INSERT INTO {_GUEST} (org_id, host_id, guest_uuid, attributes, created, updated) "
        f"SELECT %s, {sg}.system_id, {sg}.guest_uuid, {sg}.attributes, %s, %s FROM {sg} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {_GUEST} g WHERE g.host_id = {sg}.system_id "
        f"AND g.guest_uuid = {sg}.guest_uuid) ORDER BY {sg}.system_id, {sg}.guest_uuid "
        f"RETURNING host_id, guest_uuid", [org.id, now, now])
    added = cursor.fetchall()
    result.removed = sorted((g, hv_of_system.get(h, "")) for h, g in removed)
    result.added = sorted((g, hv_of_system.get(h, "")) for h, g in added)
    guest_changed_hosts = {h for h, _ in removed} | {h for h, _ in changed} | {h for h, _ in added}

    touched = sorted({g for _, g in removed} | {g for _, g in changed} | {g for _, g in added})
    if touched:
        _follow_guests(cursor, org, touched, now, report_id, source, result)

    # 5. resultData: created / updated / unchanged / failedUpdate.
    cursor.execute(
        f"SELECT {hv}.idx, s.uuid, s.name, {hv}.created, {hv}.changed, {hv}.system_id FROM {hv} "
        f"JOIN {_SYSTEM} s ON s.id = {hv}.system_id WHERE {hv}.failed IS NULL ORDER BY {hv}.idx")
    for idx, uuid, name, created, changed_meta, system_id in cursor.fetchall():
        item = {"uuid": _uuid_text(uuid), "name": name, "owner": {"key": org_key}}
        entry = by_idx[idx]
        result.system_ids[entry.hypervisor_id] = system_id
        if created:
            result.created.append(item)
            result.statuses[entry.hypervisor_id] = "created"
        elif changed_meta or system_id in guest_changed_hosts:
            result.updated.append(item)
            result.statuses[entry.hypervisor_id] = "updated"
        else:
            result.unchanged.append(item)
            result.statuses[entry.hypervisor_id] = "unchanged"
    verbs = {"find": "find", "create": "create", "update": "update"}
    for idx, kind in sorted(failed_idx.items()):
        entry = by_idx[idx]
        result.failed.append(f"{entry.raw_id}: Unable to {verbs[kind]} hypervisor with id "
                             f"{entry.raw_id} in org {org_key}")
        result.statuses[entry.hypervisor_id] = "missing" if kind == "find" else "failed"


def _uuid_text(value) -> str:
    text = str(value)
    if len(text) == 32:  # SQLite stores UUIDField as hex
        text = f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return text


def _follow_guests(cursor, org, touched: list[str], now, report_id, source, result) -> None:
    """Current host of each touched guest UUID, its timeline, and registered guests' host."""
    st = stage.STAGE_TOUCHED
    stage.load(cursor, st, ("guest_uuid",), [(g,) for g in touched])
    # Newest row wins (served by guestid_org_guest_upd_idx).
    stage.analyze(cursor, st)
    cursor.execute(stage.set_newest_host_sql(st, _GUEST), [org.id])
    # Timeline: close the open stay where the host changed, open the new one.
    cursor.execute(
        f"UPDATE {_INTERVAL} SET ended = %s FROM {st} WHERE {_INTERVAL}.org_id = %s "
        f"AND {_INTERVAL}.ended IS NULL AND {_INTERVAL}.guest_uuid = {st}.guest_uuid "
        f"AND ({st}.host_id IS NULL OR {_INTERVAL}.host_id IS NULL "
        f"OR {_INTERVAL}.host_id <> {st}.host_id) "
        f"RETURNING {_INTERVAL}.guest_uuid, {_INTERVAL}.host_hypervisor_id", [now, org.id])
    left = dict(cursor.fetchall())
    cursor.execute(
        f"INSERT INTO {_INTERVAL} (org_id, guest_uuid, host_id, host_name, host_hypervisor_id,"
        f" started, ended, source, report_id) "
        f"SELECT %s, {st}.guest_uuid, {st}.host_id, s.name, COALESCE(s.hypervisor_id, ''), %s,"
        f" NULL, %s, %s FROM {st} JOIN {_SYSTEM} s ON s.id = {st}.host_id "
        f"WHERE NOT EXISTS (SELECT 1 FROM {_INTERVAL} i WHERE i.org_id = %s "
        f"AND i.guest_uuid = {st}.guest_uuid AND i.ended IS NULL) "
        f"RETURNING guest_uuid, host_hypervisor_id",
        [org.id, now, source[:64], report_id, org.id])
    arrived = dict(cursor.fetchall())
    result.moved = sorted((g, left.get(g), arrived.get(g)) for g in set(left) | set(arrived)
                          if g in left and g in arrived)
    # Registered guests with these UUIDs (either byte order) follow their newest host.
    cursor.execute(
        f"SELECT s.id FROM {_SYSTEM} s JOIN {st} ON s.virt_uuid = {st}.guest_uuid "
        f"WHERE s.org_id = %s AND s.is_guest = {stage.true()} UNION "
        f"SELECT s.id FROM {_SYSTEM} s JOIN {st} ON s.virt_uuid_swapped = {st}.guest_uuid "
        f"WHERE s.org_id = %s AND s.is_guest = {stage.true()}", [org.id, org.id])
    guest_ids = sorted(row[0] for row in cursor.fetchall())
    refresh_current_hosts_of(org, guest_ids, now)
    result.resolved = guest_ids


# --- Current host -----------------------------------------------------------------------------

def _newest_host(org_id: int):
    """Subquery: the host of the most recently written guest-id row matching a system's
    ``virt.uuid`` in either byte order (served by ``guestid_org_guest_upd_idx``)."""
    return Subquery(
        GuestId.objects.filter(org_id=org_id)
        .filter(Q(guest_uuid=OuterRef("virt_uuid")) | Q(guest_uuid=OuterRef("virt_uuid_swapped")))
        .order_by("-updated", "-id").values("host_id")[:1]
    )


def refresh_current_hosts_of(org: Organization, system_ids: list[int], now: datetime) -> None:
    """Recompute ``current_host`` of these registered guests: one SELECT of those whose host
    changes and two UPDATEs, in chunks that fit any backend's parameter limit."""
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


def guests_with_uuids(org: Organization, uuids) -> list[int]:
    """Registered guests whose ``virt.uuid`` is one of ``uuids`` in either byte order."""
    uuids = sorted({normalize_guest_uuid(u) for u in uuids if u})
    ids: set[int] = set()
    for start in range(0, len(uuids), 5000):
        chunk = uuids[start:start + 5000]
        ids |= set(System.objects.filter(org=org, is_guest=True)
                   .filter(Q(virt_uuid__in=chunk) | Q(virt_uuid_swapped__in=chunk))
                   .values_list("id", flat=True))
    return sorted(ids)
