"""Reading manifests and checking their signature (subscriptions/manifest/reader.py,
signature.py) on the real files in ../shared/manifests/ and on hostile copies."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import zipfile
import zlib
from decimal import Decimal

import pytest

from subscriptions.manifest import reader, signature
from subscriptions.manifest.reader import InvalidManifest
from tests import manifests as m

LIMIT = 32 * 1024 * 1024


def read(blob: bytes) -> reader.Manifest:
    return reader.parse_export(reader.open_archive(blob, LIMIT).export)


def test_the_shared_files_are_read_in_place():
    assert m.MANIFESTS.is_dir() and m.REDHAT_CA.is_file()
    assert sorted(p.name for p in m.MANIFESTS.glob("*.zip")) == sorted(m.ALL)
    tracked = subprocess.run(["git", "ls-files"], cwd=m.ROOT, capture_output=True, text=True).stdout
    assert not [f for f in tracked.splitlines() if f.endswith((".zip", ".crt"))], \
        "manifests and certificates must not be copied into the repository"


@pytest.mark.parametrize("name", m.VALID)
def test_red_hat_signed_manifests_verify(name):
    archive = reader.open_archive(m.data(name), LIMIT)
    certs = signature.load_certificates(m.REDHAT_CA.read_bytes())
    check = signature.verify(archive.export, archive.signature, certs)
    assert check.valid, check.message
    assert "Red Hat Candlepin Authority" in check.signer
    assert check.fingerprint.startswith("D2:87:55:9E")


@pytest.mark.parametrize("name", m.MODIFIED + m.UNKNOWN_SIGNER)
def test_modified_or_foreign_manifests_do_not_verify(name):
    archive = reader.open_archive(m.data(name), LIMIT)
    certs = signature.load_certificates(m.REDHAT_CA.read_bytes())
    check = signature.verify(archive.export, archive.signature, certs)
    assert check.status == signature.INVALID
    assert "does not verify" in check.message


def test_no_trusted_certificate_means_untrusted(settings, tmp_path):
    settings.SAM_MANIFEST_TRUST_DIR = str(tmp_path / "empty")
    archive = reader.open_archive(m.data(m.VALID[0]), LIMIT)
    check = signature.verify(archive.export, archive.signature)
    assert check.status == signature.UNTRUSTED and "trust_manifest_cert" in check.message


def test_trust_directory_follows_links_and_skips_junk(settings, tmp_path):
    directory = m.trust(settings, tmp_path, m.REDHAT_CA, b"not a certificate")
    assert (directory / "cert0.pem").is_symlink()
    assert len(signature.trusted_certificates()) == 1
    archive = reader.open_archive(m.data(m.VALID[0]), LIMIT)
    assert signature.verify(archive.export, archive.signature).valid


def test_a_test_key_verifies_what_it_signed_and_nothing_else():
    blob = m.resign("katello-manifest_small.zip")
    archive = reader.open_archive(blob, LIMIT)
    assert signature.verify(archive.export, archive.signature, [m.signer().cert]).valid
    assert not signature.verify(archive.export + b"x", archive.signature, [m.signer().cert]).valid


def test_both_date_formats_and_the_4x_layout():
    old = read(m.data("katello-manifest_small.zip"))  # +0000, provided products on the pool
    new = read(m.data("robottelo-expired-manifest-2023-03.zip"))  # +00:00, nested in the product
    assert old.created.isoformat() == "2017-11-21T16:01:05.324000+00:00"
    assert new.created.isoformat() == "2023-03-13T04:05:13.105000+00:00"
    (ent,) = old.entitlements
    assert (ent.quantity, ent.start.isoformat(), ent.end.isoformat()) == (
        1, "2017-02-02T05:00:00+00:00", "2018-02-02T04:59:59+00:00")  # the entitlement's, not the pool's
    assert sorted(old.products["RH2262474"].provided) == ["172", "273"]
    es = new.products["ES0113909"]
    assert len(es.provided) == 302
    assert es.attributes["virt_limit"] == "unlimited" and es.attributes["instance_multiplier"] == "2"
    assert all(isinstance(v, str) for p in new.products.values() for v in p.attributes.values())
    assert {e.product: e.quantity for e in new.entitlements} == {"MCT3694F3": 1, "MCT3718": 1,
                                                                  "ES0113909": 100}
    assert new.distributor.content_access_mode == "org_environment"
    assert new.distributor.id_cert_expires.isoformat() == "2023-11-13T13:22:24+00:00"


def test_serials_are_exact_text():
    fam = read(m.data("fam-manifest_foreman-ansible-modules.zip"))
    assert fam.distributor.id_cert_serial == "8524693780135267066"  # > 2**53: a float would round
    assert fam.entitlements[0].cert_serial == "3374519184814890701"
    assert reader._serial(Decimal("9220396096563833000"), "x") == "9220396096563833000"
    with pytest.raises(InvalidManifest):
        reader._serial(Decimal("9.2203960965638330005E18"), "x")


def test_legacy_consumer_with_only_a_uuid():
    legacy = read(m.data("katello-legacy-fake-manifest-2011-11.zip"))
    assert legacy.distributor.uuid == "ba6710c1-b11e-413a-b2a6-83a948cde026"
    assert (legacy.distributor.name, legacy.distributor.id_cert_expires) == ("", None)
    assert sorted(e.product for e in legacy.entitlements) == ["rand-66393", "rand-99053"]


def test_nothing_secret_is_kept():
    """The manifest holds private keys; what sam keeps (and queues for a job) holds none."""
    assert b"PRIVATE KEY" in b"".join(m.export_entries("fam-manifest_foreman-ansible-modules.zip").values())
    parsed = read(m.data("fam-manifest_foreman-ansible-modules.zip"))
    blob = parsed.to_bytes()
    assert reader.Manifest.from_bytes(blob) == parsed
    assert b"PRIVATE KEY" not in zlib.decompress(blob) and b"BEGIN CERTIFICATE" not in zlib.decompress(blob)


def test_parse_date_forms_and_range():
    when = reader.parse_date("2017-11-21T16:01:05.324+0000", "d")
    assert when.isoformat() == "2017-11-21T16:01:05.324000+00:00"
    assert reader.parse_date("2023-03-13T04:05:13.105-05:00", "d").hour == 9
    assert reader.parse_date("2023-03-13T04:05:13Z", "d").second == 13
    for bad in ("yesterday", "0001-01-01T00:00:00Z", "2023-02-30T00:00:00Z", 20230101):
        with pytest.raises(InvalidManifest):
            reader.parse_date(bad, "d")


# --- Hostile and broken uploads -----------------------------------------------------------------

def _inner_zip(entries: dict[str, bytes]) -> bytes:
    return m.zip_of(entries)


def _bomb(size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("consumer_export.zip", "w", force_zip64=True) as stream:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                stream.write(chunk)
        zf.writestr("signature", b"x" * 512)
    return out.getvalue()


HOSTILE_CASES = ["zip bomb", "entry ../x", "inner ../x", "missing signature", "empty signature",
                 "truncated", "not a zip", "empty", "extra file", "no data"]


@functools.cache
def hostile() -> dict[str, bytes]:
    real = m.data("katello-manifest_small.zip")
    entries = m.export_entries("katello-manifest_small.zip")
    export = _inner_zip(entries)
    return {
        "zip bomb": _bomb(96 * 1024 * 1024),  # ~100 KB packed; more than twice the 32 MiB limit
        "entry ../x": m.zip_of({"consumer_export.zip": export, "signature": b"s" * 512, "../x": b"boom"}),
        "inner ../x": m.outer(_inner_zip({**entries, "../x": b"boom"}), b"s" * 512),
        "missing signature": m.zip_of({"consumer_export.zip": export}),
        "empty signature": m.zip_of({"consumer_export.zip": export, "signature": b""}),
        "truncated": real[: len(real) // 2],
        "not a zip": b"PK\x03\x04 nothing to see here",
        "empty": b"",
        "extra file": m.zip_of({"consumer_export.zip": export, "signature": b"s", "README": b"hi"}),
        "no data": m.zip_of({"signature": b"s" * 512}),
    }


@pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
def test_hostile_outer_zips_are_refused_with_a_reason(case):
    with pytest.raises(InvalidManifest) as exc:
        read(hostile()[case])
    assert exc.value.message and len(exc.value.message) < 400
    if case == "zip bomb":
        assert "more than the limit" in exc.value.message


def _export_with(change) -> bytes:
    entries = m.export_entries("katello-manifest_small.zip")
    change(entries)
    return _inner_zip(entries)


def _entitlement_name(entries) -> str:
    return next(n for n in entries if n.startswith("export/entitlements/"))


def _edit_entitlement(entries, edit) -> None:
    name = _entitlement_name(entries)
    doc = json.loads(entries[name])
    edit(doc)
    entries[name] = json.dumps(doc).encode()


INNER = {
    "unexpected file": (lambda e: e.update({"export/secret/x.txt": b"x"}), "unexpected file"),
    "no meta": (lambda e: e.pop("export/meta.json"), "meta.json"),
    "bad json": (lambda e: e.update({"export/meta.json": b"{nope"}), "not valid JSON"),
    "meta not an object": (lambda e: e.update({"export/meta.json": b"[]"}), "JSON object"),
    "no consumer uuid": (lambda e: e.update({"export/consumer.json": b"{}"}), "uuid is missing"),
    "unknown product": (lambda e: _edit_entitlement(e, lambda d: d["pool"].update(productId="NOPE")),
                        "unable to find product"),
    "float quantity": (lambda e: _edit_entitlement(e, lambda d: d.update(quantity=1.5)), "whole number"),
    "NUL in contract": (lambda e: _edit_entitlement(e, lambda d: d["pool"].update(contractNumber="1\x002")),
                        "NUL"),
    "end before start": (lambda e: _edit_entitlement(e, lambda d: d.update(endDate="2001-01-01T00:00:00Z")),
                         "not after"),
    "inner bomb": (lambda e: e.update({"export/products/bomb.json": b" " * (reader.MAX_ENTRY_BYTES + 1)}),
                   "more than the limit"),
    "duplicate entitlement": (lambda e: e.update({"export/entitlements/copy.json": e[_entitlement_name(e)]}),
                              "appears twice"),
}


@pytest.mark.parametrize("case", sorted(INNER))
def test_unreadable_or_unexpected_inner_files_say_what_is_wrong(case):
    change, words = INNER[case]
    with pytest.raises(InvalidManifest) as exc:
        reader.parse_export(_export_with(change))
    assert words.lower() in exc.value.message.lower(), exc.value.message


def test_size_limit_of_the_upload():
    with pytest.raises(InvalidManifest, match="more than the limit"):
        reader.open_archive(m.data("katello-manifest_small.zip"), 1000)
