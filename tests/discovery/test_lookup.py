"""Region lookups in a quadrant-index Parquet file, against a brute-force scan."""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray

from constellation.discovery.match import match_tile
from constellation.io.quadrant_lookup import (
    LookupStats,
    QuadrantIndexFile,
    QuadrantIndexTable,
    box_disc,
    lookup_disc,
    lookup_subtile,
    lookup_tile,
    search_order,
)
from constellation.io.storage import Storage
from constellation.manifest.quadrant_index import (
    FOOTPRINT_VERTICES,
    MAX_QUADRANT_RADIUS_DEG,
    QUADRANT_INDEX_SCHEMA,
)
from constellation.sky import SubTileGrid, Tile, healpix, plane_to_sky

ROW_GROUP = 256
MARGIN = 1.0
GRID = SubTileGrid(4, 4, MARGIN)

#: Clusters of quadrants (ra, dec, radius deg, count) plus a sprinkle over the sphere.
CLUSTERS = [(0.0, 0.5, 1.2, 1200), (53.0, -28.0, 1.2, 1200), (123.0, 89.4, 1.2, 1200)]
N_SPRINKLE = 800


def _disc_points(
    rng: np.random.Generator, ra: float, dec: float, radius: float, n: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r = radius * 60.0 * np.sqrt(rng.random(n))
    t = rng.random(n) * 2 * np.pi
    return plane_to_sky(r * np.cos(t), r * np.sin(t), ra, dec)


def _square_footprints(
    ra: NDArray[np.float64], dec: NDArray[np.float64], rng: np.random.Generator
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A 3.4' square (great-circle edges, 8 vertices an edge) about each centre, rotated."""
    per = FOOTPRINT_VERTICES // 4
    t = np.arange(per) / per
    h = 1.72  # arcmin: half-diagonal 2.43' = 146" < MAX_QUADRANT_RADIUS_DEG
    ux = np.concatenate([-h + 2 * h * t, np.full(per, h), h - 2 * h * t, np.full(per, -h)])
    uy = np.concatenate([np.full(per, -h), -h + 2 * h * t, np.full(per, h), h - 2 * h * t])
    ang = rng.random(ra.size)[:, None] * 2 * np.pi
    x = ux * np.cos(ang) - uy * np.sin(ang)
    y = ux * np.sin(ang) + uy * np.cos(ang)
    return plane_to_sky(x, y, ra[:, None], dec[:, None])


def synthetic_index(seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    parts = [_disc_points(rng, *c) for c in CLUSTERS]
    z = rng.uniform(-1, 1, N_SPRINKLE)
    parts.append((rng.uniform(0, 360, N_SPRINKLE), np.degrees(np.arcsin(z))))
    ra = np.concatenate([p[0] for p in parts])
    dec = np.concatenate([p[1] for p in parts])
    hp = healpix.radec_to_index(ra, dec)
    order = np.argsort(hp, kind="stable")
    ra, dec, hp = ra[order], dec[order], hp[order]
    fra, fdec = _square_footprints(ra, dec, rng)
    n = ra.size
    cols: dict[str, pa.Array] = {}
    for f in QUADRANT_INDEX_SCHEMA:
        if f.name == "healpix":
            cols[f.name] = pa.array(hp, f.type)
        elif f.name == "center_ra":
            cols[f.name] = pa.array(ra, f.type)
        elif f.name == "center_dec":
            cols[f.name] = pa.array(dec, f.type)
        elif f.name == "footprint_ra":
            cols[f.name] = pa.array(list(fra), f.type)
        elif f.name == "footprint_dec":
            cols[f.name] = pa.array(list(fdec), f.type)
        elif f.name == "obs_id":  # a unique row id, to compare results
            cols[f.name] = pa.array(np.arange(n, dtype=np.int32), f.type)
        elif pa.types.is_string(f.type):
            cols[f.name] = pa.array(["x"] * n, f.type)
        else:
            cols[f.name] = pa.array(np.zeros(n), pa.float64()).cast(f.type)
    return pa.Table.from_pydict(cols, schema=QUADRANT_INDEX_SCHEMA)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    table = synthetic_index()
    path = tmp_path_factory.mktemp("qi") / "quadrant_index.parquet"
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path, table


def _sep(ra0: float, dec0: float, table: pa.Table) -> NDArray[np.float64]:
    ra = np.radians(table.column("center_ra").to_numpy())
    dec = np.radians(table.column("center_dec").to_numpy())
    r0, d0 = math.radians(ra0), math.radians(dec0)
    c = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - r0)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def _brute_force(
    table: pa.Table, ra0: float, dec0: float, radius: float
) -> tuple[set[int], set[int]]:
    """Ids surely inside the disc, and ids possibly inside (rounding at the edge)."""
    d = _sep(ra0, dec0, table)
    ids = table.column("obs_id").to_numpy()
    return set(ids[d < radius - 1e-9].tolist()), set(ids[d <= radius + 1e-9].tolist())


TILES = {
    "ra0": Tile(1, 0.0, 0.5),
    "ra0-east": Tile(2, 359.6, 0.2),
    "edf-f": Tile(3, 53.2, -27.8),
    "pole": Tile(4, 0.0, 90.0),
    "near-pole": Tile(5, 250.0, 89.2),
    "empty": Tile(6, 200.0, 30.0),
}


@pytest.mark.parametrize("name", list(TILES))
def test_lookup_tile_matches_brute_force(index: tuple[Path, pa.Table], name: str) -> None:
    path, table = index
    tile = TILES[name]
    stats = LookupStats()
    got = lookup_tile(None, path, tile, MARGIN, stats=stats)
    ra0, dec0, r = box_disc(tile, tile.reach_box(MARGIN))
    radius = r + MAX_QUADRANT_RADIUS_DEG
    assert stats.radius_deg == pytest.approx(radius)
    assert r >= math.degrees(math.atan(math.sqrt(2) * 16.0 / (60 * 180 / math.pi)))
    sure, maybe = _brute_force(table, ra0, dec0, radius)
    ids = set(got.column("obs_id").to_pylist())
    assert sure <= ids <= maybe
    if name != "empty":
        assert len(sure) > 10
    # sorted by healpix, all columns, in the schema's order
    assert got.schema.names == QUADRANT_INDEX_SCHEMA.names
    hp = got.column("healpix").to_numpy()
    assert np.all(np.diff(hp) >= 0)
    # only a fraction of the file was read
    n_groups = pq.ParquetFile(path).metadata.num_row_groups
    assert stats.row_groups_total == n_groups
    assert stats.row_groups_read <= n_groups // 3
    assert stats.rows_returned == len(ids)
    assert stats.rows_read >= stats.rows_returned


def test_lookup_reads_only_overlapping_row_groups(
    index: tuple[Path, pa.Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = index
    seen: list[list[int]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(
        self: pq.ParquetFile, row_groups: list[int], *args: object, **kwargs: object
    ) -> pa.Table:
        seen.append(list(row_groups))
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read the whole file"))
    lookup_tile(None, path, TILES["edf-f"], MARGIN, columns=["obs_id"])
    assert len(seen) == 1
    n_groups = pq.ParquetFile(path).metadata.num_row_groups
    assert 0 < len(seen[0]) <= n_groups // 3
    # exactly the row groups whose statistics overlap the ranges
    meta = pq.ParquetFile(path).metadata
    tile = TILES["edf-f"]
    ra0, dec0, r = box_disc(tile, tile.reach_box(MARGIN))
    radius = r + MAX_QUADRANT_RADIUS_DEG
    ranges = healpix.disc_ranges(ra0, dec0, radius, search_order(radius))
    expected = []
    for i in range(meta.num_row_groups):
        st = meta.row_group(i).column(0).statistics
        if any(a <= st.max and b > st.min for a, b in ranges):
            expected.append(i)
    assert seen[0] == expected


def test_lookup_columns_and_inexact(index: tuple[Path, pa.Table]) -> None:
    path, _ = index
    tile = TILES["ra0"]
    got = lookup_tile(None, str(path), tile, MARGIN, columns=["obs_id", "footprint_ra"])
    assert got.schema.names == ["obs_id", "footprint_ra"]
    loose = lookup_tile(None, path, tile, MARGIN, columns=["obs_id"], exact=False, order=8)
    assert set(got.column("obs_id").to_pylist()) <= set(loose.column("obs_id").to_pylist())
    with pytest.raises(KeyError, match="nope"):
        lookup_tile(None, path, tile, MARGIN, columns=["nope"])
    with pytest.raises(ValueError, match="margin"):
        lookup_tile(None, path, tile, -1.0)


def test_lookup_subtile_and_disc(index: tuple[Path, pa.Table]) -> None:
    path, table = index
    tile = TILES["ra0"]
    st = tile.subtile(GRID, 0, 3)
    got = lookup_subtile(None, path, st, columns=["obs_id"])
    ra0, dec0, r = box_disc(tile, st.extended)
    sure, maybe = _brute_force(table, ra0, dec0, r + MAX_QUADRANT_RADIUS_DEG)
    assert sure <= set(got.column("obs_id").to_pylist()) <= maybe
    assert sure
    disc = lookup_disc(None, path, 0.0, 0.5, 0.7, columns=["obs_id"])
    sure, maybe = _brute_force(table, 0.0, 0.5, 0.7)
    assert sure <= set(disc.column("obs_id").to_pylist()) <= maybe


def test_lookup_then_match_finds_every_overlapping_quadrant(index: tuple[Path, pa.Table]) -> None:
    """Matching on the lookup's rows equals matching on the whole index."""
    path, table = index
    for tile in (TILES["ra0"], TILES["ra0-east"], TILES["near-pole"], TILES["pole"]):
        near = lookup_tile(
            None, path, tile, MARGIN, columns=["obs_id", "footprint_ra", "footprint_dec"]
        )
        full = match_tile(tile, GRID, table)
        part = match_tile(tile, GRID, near)
        all_ids = table.column("obs_id").to_numpy()
        near_ids = near.column("obs_id").to_numpy()
        n = 0
        for a, b in zip(full, part, strict=True):
            assert set(all_ids[a].tolist()) == set(near_ids[b].tolist())
            n += a.size
        assert n > 0


def test_lookup_through_storage(index: tuple[Path, pa.Table]) -> None:
    path, _ = index
    storage = Storage(base_delay_s=0.0)
    url = f"memory://test-{uuid.uuid4().hex}/quadrant_index.parquet"
    storage.write_bytes(url, path.read_bytes())
    before = storage.stats.snapshot()
    tile = TILES["edf-f"]
    remote = lookup_tile(storage, url, tile, MARGIN, columns=["obs_id", "healpix"])
    local = lookup_tile(None, path, tile, MARGIN, columns=["obs_id", "healpix"])
    assert remote.equals(local)
    read = storage.stats.snapshot()
    assert read.bytes_read - before.bytes_read < path.stat().st_size
    # a local file goes through a Storage too: counted, and only the ranges it needs
    local_storage = Storage()
    again = lookup_tile(local_storage, path, tile, MARGIN, columns=["obs_id", "healpix"])
    assert again.equals(local)
    assert 0 < local_storage.stats.bytes_read < path.stat().st_size


def test_index_file_keeps_its_footer(index: tuple[Path, pa.Table]) -> None:
    path, table = index
    with QuadrantIndexFile(None, path) as f:
        assert f.num_rows == table.num_rows
        assert f.num_row_groups == math.ceil(table.num_rows / ROW_GROUP)
        assert np.all(f.row_group_min[1:] >= f.row_group_max[:-1])
        a = f.box(TILES["edf-f"], TILES["edf-f"].reach_box(MARGIN), ["obs_id"])
        b = f.box(TILES["edf-f"], TILES["edf-f"].reach_box(MARGIN), ["obs_id"])
        assert a.equals(b)
        assert f.row_groups_for(np.empty((0, 2), dtype=np.int64)).size == 0


def test_search_order() -> None:
    assert search_order(0.4) == 10
    assert 4 <= search_order(50.0) <= search_order(0.001) <= 14
    with pytest.raises(ValueError, match="radius"):
        search_order(0.0)


@pytest.mark.integration  # the benchmark script in a subprocess
def test_benchmark_script_smoke(tmp_path: Path) -> None:
    """``benchmarks/discovery_lookup.py`` at a tiny size: runs, prints every figure once."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "discovery_lookup.py"
    keep = tmp_path / "index.parquet"
    proc = subprocess.run(
        [sys.executable, str(script), "--rows", "5000", "--tiles", "5", "--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    names = [
        "index_rows",
        "index_bytes",
        "index_build_s",
        "index_row_groups",
        "index_open_ms",
        "tile_lookup_ms",
        "tile_lookup_ms_p95",
        "tile_candidates_ms",
        "tile_candidates_ms_p95",
        "tile_lookup_cold_ms",
        "tile_lookup_cold_ms_p95",
        "tile_lookup_rows",
        "tile_lookup_row_groups_read",
        "lookup_peak_rss_mb",
    ]
    assert sorted(values) == sorted(names)
    assert all(math.isfinite(float(values[n])) for n in names)
    assert float(values["tile_lookup_rows"]) > 0
    # the index honours the contract: schema, sorted by healpix, every quadrant once
    f = pq.ParquetFile(keep)
    assert f.schema_arrow.equals(QUADRANT_INDEX_SCHEMA)
    t = f.read(columns=["healpix", "obs_id", "dither", "quadrant"])
    assert t.num_rows == int(values["index_rows"]) >= 5000
    assert np.all(np.diff(t.column("healpix").to_numpy()) >= 0)
    keys = set(
        zip(*(t.column(c).to_pylist() for c in ("obs_id", "dither", "quadrant")), strict=True)
    )
    assert len(keys) == t.num_rows


@pytest.mark.parametrize("exact", [True, False])
def test_in_memory_table_selects_what_the_file_reads(
    index: tuple[Path, pa.Table], exact: bool
) -> None:
    """``QuadrantIndexTable`` (binary searches in memory) returns what ``.box`` reads."""
    path, table = index
    mem = QuadrantIndexTable(table)
    assert mem.num_rows == table.num_rows
    n_rows = 0
    with QuadrantIndexFile(None, path) as f:
        for tile in TILES.values():
            for box in (tile.reach_box(MARGIN), next(tile.iter_subtiles(GRID)).extended):
                want = f.box(tile, box, ["obs_id"], exact=exact).column("obs_id").to_pylist()
                got = mem.box(tile, box, ["obs_id"], exact=exact).column("obs_id").to_pylist()
                assert got == want
                rows = mem.box_rows(tile, box, exact=exact)
                assert table.column("obs_id").take(pa.array(rows)).to_pylist() == want
                n_rows += len(want)
    assert n_rows > 100  # the comparison saw rows


def test_in_memory_table_rejects_unsorted_rows() -> None:
    table = synthetic_index()
    with pytest.raises(ValueError, match="not sorted"):
        QuadrantIndexTable(table.take(pa.array(np.arange(table.num_rows)[::-1])))
    with pytest.raises(ValueError, match="lacks column"):
        QuadrantIndexTable(table.drop_columns(["center_ra"]))
