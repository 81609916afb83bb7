"""Synthetic virt-who reports from a fixed seed (stdlib only).

The shape is what virt-who sends to ``POST /hypervisors/{owner}`` (virt-who-api.md): a
``hypervisorId`` object, a name, ``guestIds`` objects with ``state`` and ``attributes``
(``virtWhoType``, ``active``) and the facts virt-who's ESX backend reports. The same seed and
size always give byte-identical JSON.

Variants never deep-copy the whole report: they copy only the hosts they change, so making a
variant of the 17,000-hypervisor report costs milliseconds.
"""

from __future__ import annotations

import json
import random
import uuid

STANDARD = (1_000, 20)  # hypervisors, guests per hypervisor: 20,000 guests, ~2.6 MB
LARGE = (17_000, 6)  # Candlepin's own largest test case
QUICK_STANDARD = (100, 20)
QUICK_LARGE = (1_700, 6)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _guest(guest_uuid: str, active: bool = True) -> dict:
    return {"guestId": guest_uuid, "state": 1 if active else 5,
            "attributes": {"virtWhoType": "esx", "active": 1 if active else 0}}


def make_report(hypervisors: int, guests_per_host: int, seed: int | str) -> dict:
    """``hypervisors`` hosts with ``guests_per_host`` running guests each."""
    rng = random.Random(f"sam-bench:{seed}:{hypervisors}x{guests_per_host}")
    hosts = []
    for i in range(hypervisors):
        hv_uuid = _uuid(rng)
        guests = [_guest(_uuid(rng)) for _ in range(guests_per_host)]
        hosts.append({
            "hypervisorId": {"hypervisorId": hv_uuid},
            "name": f"esx{i:05d}.bench.example.com",
            "guestIds": guests,
            "facts": {
                "cpu.cpu_socket(s)": str(rng.choice((1, 2, 2, 2, 4))),
                "hypervisor.type": "VMware ESXi",
                "hypervisor.version": rng.choice(("6.7.0", "7.0.3", "8.0.2")),
                "hypervisor.cluster": f"cluster-{i // 32:04d}",
                "dmi.system.uuid": hv_uuid,
            },
        })
    return {"hypervisors": hosts}


def encode(report: dict) -> bytes:
    """JSON as virt-who's client writes it (``json.dumps`` default separators)."""
    return json.dumps(report).encode()


def guest_count(report: dict) -> int:
    return sum(len(h["guestIds"]) for h in report["hypervisors"])


def with_flipped_guests(report: dict, variant: int, fraction: float = 0.01) -> dict:
    """The report with ``fraction`` of its guests shut off (state 5, active 0), a different
    random set per ``variant``: a realistic small change, so the hash differs and the server
    must apply it (no dedup), while the org does not grow from run to run."""
    hosts = report["hypervisors"]
    slots = [(h, g) for h, host in enumerate(hosts) for g in range(len(host["guestIds"]))]
    rng = random.Random(f"sam-bench:flip:{variant}")
    chosen = rng.sample(slots, max(1, int(len(slots) * fraction)))
    by_host: dict[int, list[int]] = {}
    for h, g in chosen:
        by_host.setdefault(h, []).append(g)
    new_hosts = list(hosts)
    for h, guests in by_host.items():
        host = dict(hosts[h])
        guest_list = list(host["guestIds"])
        for g in guests:
            guest_list[g] = _guest(guest_list[g]["guestId"], active=False)
        host["guestIds"] = guest_list
        new_hosts[h] = host
    return {"hypervisors": new_hosts}


def with_moves(report: dict, moves: list[tuple[int, int, int]]) -> dict:
    """The report with guests moved: ``(from host index, guest index in its list, to host
    index)``. Each host's ``guestIds`` stays the complete list (removed here, added there)."""
    hosts = report["hypervisors"]
    leaving: dict[int, set[int]] = {}
    arriving: dict[int, list[dict]] = {}
    for src, g, dst in moves:
        leaving.setdefault(src, set()).add(g)
        arriving.setdefault(dst, []).append(hosts[src]["guestIds"][g])
    new_hosts = list(hosts)
    for h in set(leaving) | set(arriving):
        host = dict(hosts[h])
        gone = leaving.get(h, set())
        host["guestIds"] = [x for i, x in enumerate(hosts[h]["guestIds"]) if i not in gone]
        host["guestIds"] += arriving.get(h, [])
        new_hosts[h] = host
    return {"hypervisors": new_hosts}


def floor_rows(report: dict) -> tuple[list[tuple], list[tuple]]:
    """Rows as the server stores them (lower-case ids, attribute values as strings):
    hypervisors ``(hv_id, name, facts_json)`` and guests ``(hv_id, guest_uuid, attrs_json)``."""
    hv_rows, guest_rows = [], []
    for host in report["hypervisors"]:
        hv_id = host["hypervisorId"]["hypervisorId"].lower()
        hv_rows.append((hv_id, host["name"], json.dumps({k: str(v) for k, v in host["facts"].items()})))
        for guest in host["guestIds"]:
            attrs = {k: str(v) for k, v in guest["attributes"].items()}
            guest_rows.append((hv_id, guest["guestId"].lower(), json.dumps(attrs)))
    return hv_rows, guest_rows
