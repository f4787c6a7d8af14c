"""HATS catalogs and LSDB collections given as input: the data files that hold their rows."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import CatalogError
from storage.hats_catalog import listed_files, read_properties


def input_files(path: Path) -> list[Path]:
    """The data files holding the rows of a HATS catalog given as input: the catalog's own, or a
    LSDB collection's primary catalog's (never its margin cache, whose rows are copies of
    neighbours', nor thumbnail or statistics files), in path order."""
    catalog = path
    try:
        if (path / "collection.properties").is_file():
            catalog = path / read_properties(path, "collection.properties")["hats_primary_table_url"]
        kind = read_properties(catalog).get("dataproduct_type", "object")
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        raise CatalogError(
            f"{path}: its HATS properties cannot be read ({type(exc).__name__}: {exc}); check that it is a HATS "
            "catalog or collection (hats.properties, collection.properties)"
        ) from None
    if kind not in ("object", "source"):
        raise CatalogError(
            f"{catalog} is a HATS {kind} catalog, not a table of objects; give the object catalog (or the collection "
            "that holds it)"
        )
    files, missing, listed = listed_files(catalog)
    if missing:
        raise CatalogError(
            f"{catalog}: {len(missing)} of its {listed} partitions are missing (e.g. {missing[0]}); its rows would be "
            "lost. Copy the catalog again, or rebuild it"
        )
    if not files:
        raise CatalogError(f"{catalog}: HATS catalog without data files under dataset/; check the path")
    return files
