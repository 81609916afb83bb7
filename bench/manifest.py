"""P11: importing a Red Hat manifest — wall time and peak memory of the web process.

Each case runs in a fresh child process (so its peak RSS is its own) through Django's whole
request stack: ``POST /api/v1/orgs/{key}/manifest/`` as an org admin, multipart upload,
signature check, parse, reconcile, commit (tasks eager: the re-resolution after commit runs
in the same process). Cases: the largest real manifest (first import, then a re-import of the
same file forced past MANIFEST_SAME, which reconciles every subscription in place), and a
synthetic larger one (its products and entitlements multiplied, re-signed with a throw-away
key that the child trusts). The clock is pinned to each manifest's export time. Prints JSON.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sambench SAM_DATA_DIR=var/bench \\
        .venv/bin/python bench/manifest.py [--manifest PATH] [--scale 5] [--entitlements 100]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT.parent / "shared" / "manifests" / "robottelo-expired-manifest-2023-03.zip"
TARGET_SECONDS = 10
TARGET_RSS_MB = 600


def _django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
    os.environ.setdefault("SAM_DATA_DIR", str(ROOT / "var" / "bench"))
    os.environ["SAM_TASKS_EAGER"] = "1"
    os.environ.setdefault("SAM_ALLOWED_HOSTS", "testserver")
    import django

    django.setup()


# --- A larger manifest ----------------------------------------------------------------------

def scaled(path: Path, scale: int, entitlements: int, workdir: Path) -> tuple[Path, Path]:
    """The manifest with every product copied ``scale`` times (ids suffixed) and
    ``entitlements`` entitlements spread over the copies; signed with a new key. Returns the
    zip and the directory holding the certificate to trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.x509.oid import NameOID

    outer = zipfile.ZipFile(path)
    inner = zipfile.ZipFile(io.BytesIO(outer.read("consumer_export.zip")))
    files = {i.filename: inner.read(i) for i in inner.infolist()}
    products = {n: json.loads(v) for n, v in files.items()
                if n.startswith("export/products/") and n.endswith(".json")}
    ents = [json.loads(v) for n, v in files.items() if n.startswith("export/entitlements/")]
    out: dict[str, bytes] = {n: v for n, v in files.items() if not n.startswith("export/entitlements/")}
    for copy in range(1, scale):
        for name, doc in products.items():
            clone = dict(doc, id=f"{doc['id']}-{copy}")
            out[name.replace(".json", f"-{copy}.json")] = json.dumps(clone).encode()
    for n in range(entitlements):
        base = ents[n % len(ents)]
        copy = n % scale
        pool = dict(base["pool"], id=f"bench-pool-{n}")
        if copy:
            pool["productId"] = f"{pool['productId']}-{copy}"
        out[f"export/entitlements/bench-{n}.json"] = json.dumps(dict(base, id=f"bench-ent-{n}",
                                                                     pool=pool)).encode()
    export = io.BytesIO()
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in out.items():
            zf.writestr(name, content)
    data = export.getvalue()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sam bench signer")])
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    trust = workdir / "trust"
    trust.mkdir(exist_ok=True)
    (trust / "bench.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    target = workdir / "scaled-manifest.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("consumer_export.zip", data)
        zf.writestr("signature", key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    return target, trust


# --- One case, in a child process -----------------------------------------------------------

def child(path: Path, trust: Path | None, reimport: bool) -> dict:
    if trust is not None:
        os.environ["SAM_MANIFEST_TRUST_DIR"] = str(trust)
    _django()
    import time_machine
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    from orgs import services as orgs
    from orgs.models import Organization
    from subscriptions.manifest import importer, reader
    from subscriptions.models import Pool, Product, Subscription, UpstreamDistributor

    blob = path.read_bytes()
    manifest = reader.parse_export(reader.open_archive(blob, 1 << 30).export)
    key = f"bench-p11-{os.getpid()}"
    UpstreamDistributor.objects.filter(uuid=manifest.distributor.uuid).delete()  # left by an aborted run
    org = orgs.create_org(key, "P11 benchmark")
    user = get_user_model().objects.filter(username="bench-p11").first() or \
        get_user_model().objects.create_user("bench-p11", password=None)
    orgs.set_member_role(org, user.username, "admin")
    client = Client()
    client.force_login(user)
    url = f"/api/v1/orgs/{key}/manifest/"
    force = "" if _trusted(blob) else "SIGNATURE_CONFLICT"
    try:
        with time_machine.travel(manifest.created + timedelta(minutes=5), tick=True):
            def post(*extra: str) -> tuple[float, dict]:
                query = "&".join(f"force={f}" for f in (force, *extra) if f)
                start = time.perf_counter()
                response = client.post(f"{url}?{query}", {"file": SimpleUploadedFile(path.name, blob)})
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise SystemExit(f"import failed: HTTP {response.status_code} {response.content[:500]!r}")
                return elapsed, response.json()

            seconds, body = post()
            result = {"first_import_s": round(seconds, 3), "status": body["status"],
                      "counts": body["counts"], "signature": body["signature"]}
            if reimport:
                seconds, body = post(importer.MANIFEST_SAME)
                result.update(reimport_s=round(seconds, 3), reimport_counts=body["counts"])
            result.update(subscriptions=Subscription.objects.filter(org=org).count(),
                          pools=Pool.objects.filter(org=org).count(),
                          products=Product.objects.filter(org=org).count())
    finally:
        if UpstreamDistributor.objects.filter(org=org).exists():
            importer.delete_manifest(org)
        Organization.objects.filter(pk=org.pk).delete()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result.update(file_bytes=len(blob), unpacked_bytes=manifest.unpacked_bytes,
                  manifest_products=len(manifest.products), entitlements=len(manifest.entitlements))
    return result


def _trusted(blob: bytes) -> bool:
    from subscriptions.manifest import reader, signature

    archive = reader.open_archive(blob, 1 << 30)
    return signature.verify(archive.export, archive.signature).valid


def run_child(path: Path, trust: Path | None, reimport: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--reimport" if reimport else "--no-reimport"]
    if trust is not None:
        cmd += ["--trust", str(trust)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"case {path.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT)
    parser.add_argument("--scale", type=int, default=5, help="copies of every product (larger case)")
    parser.add_argument("--entitlements", type=int, default=100, help="entitlements (larger case)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trust", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reimport", action=argparse.BooleanOptionalAction, default=True,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.trust, args.reimport)))
        return
    started, load = time.time(), os.getloadavg()
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        redhat = Path(tmp) / "trust-redhat"  # Red Hat's certificate, linked in place
        redhat.mkdir()
        (redhat / "redhat.pem").symlink_to(DEFAULT.parent / "candlepin-redhat-ca.crt")
        real = run_child(args.manifest, redhat, True)
        cases.append({"case": f"real: {args.manifest.name}", **real})
        if args.scale > 1 or args.entitlements:
            path, trust = scaled(args.manifest, args.scale, args.entitlements, Path(tmp))
            big = run_child(path, trust, True)
            name = f"synthetic: products x{args.scale}, {args.entitlements} entitlements"
            cases.append({"case": name, **big})
    for case in cases:
        slowest = max(case["first_import_s"], case.get("reimport_s", 0))
        case.update(target_s=TARGET_SECONDS, target_rss_mb=TARGET_RSS_MB,
                    met=slowest <= TARGET_SECONDS and case["peak_rss_mb"] <= TARGET_RSS_MB)
    print(json.dumps({"meta": {"loadavg_start": load, "loadavg_end": os.getloadavg(),
                               "seconds": round(time.time() - started, 1),
                               "database": os.environ.get("DATABASE_URL", "sqlite (SAM_DATA_DIR)")},
                      "results": cases}, indent=2))


if __name__ == "__main__":
    main()
