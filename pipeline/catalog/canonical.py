"""Source columns → the canonical schema: renamed, cast, and ids checked exact (never changed silently)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from pipeline.catalog.ids import MISSING_ID, BadValue, integer_ids, stable_id_hash
from pipeline.catalog.readers.base import CatalogSource
from pipeline.catalog.schema import FLOAT32_COLUMNS, FLOAT64_COLUMNS
from pipeline.errors import CatalogError


def canonical_frame(
    raw: Mapping[str, np.ndarray] | pd.DataFrame, src: CatalogSource, first_row: Callable[[], int] = lambda: 0
) -> pd.DataFrame:
    """Rename and cast source columns to the canonical schema; absent optional columns are NaN.

    ``first_row`` gives the file row of the first row of ``raw`` (called only to name a bad value).
    """
    return pd.DataFrame(canonical_columns(raw, src, first_row))


def canonical_columns(
    raw: Mapping[str, np.ndarray] | pd.DataFrame, src: CatalogSource, first_row: Callable[[], int] = lambda: 0
) -> dict[str, np.ndarray | pd.api.extensions.ExtensionArray]:
    """:func:`canonical_frame`'s columns as arrays, in order (no DataFrame: for Arrow tables)."""
    try:
        return _canonical_columns(raw, src)
    except BadValue as bad:
        raise CatalogError(bad.message(src.path, first_row() + bad.row)) from None


def _canonical_columns(raw: Mapping[str, np.ndarray] | pd.DataFrame, src: CatalogSource) -> dict:
    n = len(next(iter(raw.values()))) if isinstance(raw, Mapping) else len(raw)
    out: dict[str, np.ndarray | pd.Series] = {}
    id_values = raw[src.mapping["objid"]]
    if src.string_id:
        text = pd.Series(np.asarray(id_values, dtype=object))
        missing = np.flatnonzero((text.isna() | (text.astype(str).str.strip() == "")).to_numpy())
        if missing.size:
            raise BadValue("objid", src.mapping["objid"], int(missing[0]), None, MISSING_ID)
        ids = text.astype(str).to_numpy()
        out["objid"] = stable_id_hash(ids)
        out["source_id"] = pd.array(ids, dtype="string")
    else:
        out["objid"] = integer_ids(id_values, src.mapping["objid"], zero_padded=src.id_kind == "int")
    for canonical in FLOAT64_COLUMNS + FLOAT32_COLUMNS:
        dtype = np.float64 if canonical in FLOAT64_COLUMNS else np.float32
        source = src.mapping.get(canonical)
        if source is None:
            out[canonical] = np.full(n, np.nan, dtype=dtype)
        else:
            out[canonical] = _numeric(canonical, source, raw[source]).astype(dtype, copy=False)
    columns = ["objid", *(["source_id"] if src.string_id else []), *FLOAT64_COLUMNS, *FLOAT32_COLUMNS]
    return {c: out[c] for c in columns}


def _numeric(canonical: str, source: str, values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iufb":
        return arr
    converted = pd.to_numeric(pd.Series(arr), errors="coerce")
    bad = converted.isna() & pd.Series(arr).notna() & (pd.Series(arr).astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise BadValue(canonical, source, row, arr[row], "not a number")
    return converted.to_numpy(dtype=np.float64)
