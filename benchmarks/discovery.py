"""Benchmark discovery: extension-header reads of a DET file and indexing a field on S3.

Run from the repository root::

    uv run python benchmarks/discovery.py

Prints ``name=value`` lines (progress on stderr).

(a) One true-geometry DET file (a 1 x 1-tile ``sparse`` field simulated into a
temporary directory: 7.3 GB apparent, 432 extensions), read with
:func:`constellation.io.fits.read_extension_headers` from local disk:

``det_rounds``
    Sequential round trips (round 1: primary + first extension header; round 2:
    all predicted headers at once).
``det_requests``
    Ranged reads made.
``det_bytes``
    Bytes fetched.
``det_header_bytes``
    Bytes of all headers of the file (what must be read at least).
``det_bytes_ratio``
    ``det_bytes / det_header_bytes``.
``det_s``
    Wall time of the read (local disk: no network latency).

(b) A light field (2 x 2 tiles, short exposures included, 64x binning) uploaded
public-read to a moto S3 server started by this script on 127.0.0.1 and
indexed anonymously with :func:`constellation.io.quadrant_index.build_quadrant_index`
(index written to a local temporary file):

``field_det_files``, ``field_quadrant_exposures``
    DET files indexed and rows of the index (144 per DET file).
``field_index_s``, ``field_requests``, ``field_bytes``, ``field_rounds``
    Wall time, requests (listing and index write included), bytes read and
    the largest number of sequential rounds of any one file, for the first build.
``field_reindex_s``, ``field_reindex_requests``
    The same for a second, incremental build with nothing changed (no file
    is read again: a listing, the old index, the write).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path


def _det(tmp: Path) -> dict[str, object]:
    from constellation.io.fits import read_extension_headers
    from constellation.io.observations import list_observations
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

    root = tmp / "sparse"
    spec = FieldSpec(mode="sparse", n_tiles_ra=1, n_tiles_dec=1, density_per_arcmin2=1)
    print("simulating a sparse field", file=sys.stderr)
    simulate_field(spec, Storage(), str(root))
    det = list_observations(Storage(), str(root / "q1" / "VIS")).exposures[0].det
    assert det is not None
    t0 = time.perf_counter()
    scan = read_extension_headers(Storage(), det.url, size=det.size)
    elapsed = time.perf_counter() - t0
    return {
        "det_rounds": scan.rounds,
        "det_requests": scan.requests,
        "det_bytes": scan.bytes_read,
        "det_header_bytes": scan.header_bytes_total,
        "det_bytes_ratio": round(scan.bytes_read / scan.header_bytes_total, 4),
        "det_s": round(elapsed, 4),
    }


def _field(tmp: Path) -> dict[str, object]:
    import boto3
    from moto.server import ThreadedMotoServer

    from constellation.io.quadrant_index import build_quadrant_index
    from constellation.io.storage import Storage
    from constellation.simulate import FieldSpec
    from constellation.simulate.run import simulate_field

    root = tmp / "light"
    spec = FieldSpec(n_tiles_ra=2, n_tiles_dec=2, include_short=True, light_binning=64,
                     density_per_arcmin2=5.0)  # fmt: skip
    print("simulating a light field", file=sys.stderr)
    summary = simulate_field(spec, Storage(), str(root))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="bench")
        print("uploading", file=sys.stderr)
        for path in sorted(p for p in (root / "q1" / "VIS").rglob("*") if p.is_file()):
            key = path.relative_to(root).as_posix()
            client.put_object(Bucket="bench", Key=key, Body=path.read_bytes(), ACL="public-read")
        out = str(tmp / "quadrant_index.parquet")
        storage = Storage(anon=True, endpoint_url=endpoint)
        print("indexing", file=sys.stderr)
        first = build_quadrant_index(storage, "s3://bench/q1/VIS", out)
        second = build_quadrant_index(storage, "s3://bench/q1/VIS", out)
    finally:
        server.stop()
    assert first.det_read == len(summary.plan.exposures)
    return {
        "field_det_files": first.det_read,
        "field_quadrant_exposures": first.quadrant_exposures,
        "field_index_s": round(first.seconds, 3),
        "field_requests": first.requests,
        "field_bytes": first.bytes_read,
        "field_rounds": first.rounds,
        "field_reindex_s": round(second.seconds, 3),
        "field_reindex_requests": second.requests,
    }


def main() -> None:
    import os

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="constellation-bench-disc-") as tmp:
        figures = {**_det(Path(tmp)), **_field(Path(tmp))}
    for k, v in figures.items():
        print(f"{k}={v}")


if __name__ == "__main__":
    main()
