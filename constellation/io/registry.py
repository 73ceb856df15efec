"""Read and write tile registries (Parquet or CSV)."""

from __future__ import annotations

from pathlib import Path

from constellation.sky.registry import RegistryError, TileRegistry

__all__ = ["read_registry", "write_registry"]

_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def _format_of(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RegistryError(
            f"{path}: unknown registry format {path.suffix!r}; use one of {sorted(_FORMATS)}"
        )
    return fmt


def read_registry(path: str | Path) -> TileRegistry:
    """Load a registry from Parquet or CSV with columns ``tile_id, ra, dec,
    core_size_arcmin, extended_size_arcmin`` (extra columns are ignored).

    Raises
    ------
    RegistryError
        If the file is missing, unreadable or malformed; the message names the file.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    p = Path(path)
    fmt = _format_of(p)
    if not p.is_file():
        raise RegistryError(f"{p}: registry file not found")
    try:
        if fmt == "parquet":
            table = pq.read_table(p)
        else:
            table = pacsv.read_csv(
                p,
                convert_options=pacsv.ConvertOptions(
                    column_types={"tile_id": pa.int64(), "ra": pa.float64(), "dec": pa.float64()}
                ),
            )
    except (OSError, pa.ArrowInvalid) as exc:
        raise RegistryError(f"{p}: cannot read registry: {exc}") from exc
    try:
        return TileRegistry.from_arrow(table)
    except RegistryError as exc:
        raise RegistryError(f"{p}: {exc}") from exc


def write_registry(registry: TileRegistry, path: str | Path) -> Path:
    """Write a registry as Parquet or CSV (by suffix); the write is atomic."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    p = Path(path)
    fmt = _format_of(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    table = registry.to_arrow()
    if fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        pacsv.write_csv(table, tmp)
    tmp.replace(p)
    return p
