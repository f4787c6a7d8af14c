"""Ids are never changed silently: exact int64 ids from integer, float or text columns, or the stable
hash of text ids, with the first bad value named (:class:`BadValue`)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INT64_MAX = np.iinfo(np.int64).max
LEADING_ZERO = re.compile(r"^[+-]?0[0-9]")
INTEGER = re.compile(r"^[+-]?[0-9]+$")


class BadValue(Exception):
    """A value that cannot be stored as read: its column, row within the chunk (0-based) and why."""

    def __init__(self, canonical: str, source: str, row: int, value: object, problem: str):
        super().__init__(problem)
        self.canonical, self.source, self.row, self.value, self.problem = canonical, source, row, value, problem

    def message(self, path: str, row: int) -> str:
        where = f"{path}: row {row + 1:,} (counting data rows from 1)"
        if self.canonical == "objid":
            holds = f"holds {self.value!r}, {self.problem}" if self.problem != MISSING_ID else MISSING_ID
            if self.problem == TOO_BIG:
                fix = "keep such ids exactly with --id-kind string (as source_id; objid becomes their stable hash)"
            else:
                fix = (
                    "correct the value in the file, or, if the ids are names rather than numbers, keep them exactly "
                    "as text with --id-kind string (as source_id; objid becomes their stable 64-bit hash)"
                )
                if self.problem == ZERO_PADDED:
                    fix += "; --id-kind int reads 00123 as 123"
            return f"{where}: id column {self.source!r} {holds}. Ids are never changed silently: {fix}"
        return (
            f"{where}: column {self.source!r} ({self.canonical}) holds {self.value!r}, {self.problem}; clean the "
            f"file or map another column with --column {self.canonical}=NAME"
        )


def integer_ids(values: object, source: str = "objid", zero_padded: bool = False) -> np.ndarray:
    """Exact int64 ids from integers, integral floats or integer text ('42', ' +42 ', '42.0').

    :class:`BadValue` names the first value that is missing, not an integer (exponent forms such
    as 1.2e+18 included: digits may have been lost when the file was written), outside the int64
    range (an unsigned 64-bit id above 2**63 - 1 is refused, never wrapped), or zero-padded text
    (00123 is a name, not the number 123, unless ``zero_padded``).
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "u":
        over = np.flatnonzero(arr > INT64_MAX)
        if over.size:
            raise BadValue("objid", source, int(over[0]), int(arr[over[0]]), TOO_BIG)
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        exact = 2.0 ** (np.finfo(arr.dtype).nmant + 1)  # above this a float cannot tell neighbouring ids apart
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)) | (np.abs(arr) > exact))
        if bad.size:
            value = arr[bad[0]]
            problem = MISSING_ID if np.isnan(value) else "not an integer"
            if np.isfinite(value) and abs(value) > exact:
                problem = (
                    f"too large for a {arr.dtype} column to hold exactly (above 2^{np.finfo(arr.dtype).nmant + 1}: "
                    "digits were lost when the file was written); store the ids as integers or text"
                )
            raise BadValue("objid", source, int(bad[0]), value.item(), problem)
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        raise BadValue("objid", source, 0, arr[0].item(), "a boolean, not an id")
    return _ids_from_text(arr, source, zero_padded)


MISSING_ID = "is empty (or an NA marker such as n/a or NaN): every row needs an id"
TOO_BIG = f"above {INT64_MAX:,}, the largest 64-bit signed integer (unsigned 64-bit ids can be)"
ZERO_PADDED = "zero-padded: text, not a number"
_INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+(?:\.0*)?$")  # ASCII digits only: no 0x1F, 1_000, ١٢٣


def _ids_from_text(text: np.ndarray, source: str, zero_padded: bool) -> np.ndarray:
    try:  # fast path: clean integer text, none zero-padded
        strings = pc.utf8_trim_whitespace(pa.array(text, type=pa.string(), from_pandas=True))
        plain = pc.all(pc.match_substring_regex(strings, INTEGER.pattern)).as_py()
        padded = not zero_padded and pc.any(pc.match_substring_regex(strings, LEADING_ZERO.pattern)).as_py()
        if strings.null_count == 0 and plain and not padded:
            return pc.cast(strings, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    out = np.empty(len(text), dtype=np.int64)
    for i, value in enumerate(text):
        number, problem = _text_integer(value, zero_padded)
        if problem:
            raise BadValue("objid", source, i, value, problem)
        out[i] = number
    return out


def _text_integer(value: object, zero_padded: bool) -> tuple[int, str]:
    """The integer a text value spells exactly, or the problem with it."""
    if value is None or isinstance(value, float):
        return 0, MISSING_ID
    text = str(value).strip()
    if not text:
        return 0, MISSING_ID
    if not _INTEGER_TEXT.match(text):
        return 0, "not an integer"
    if not zero_padded and LEADING_ZERO.match(text):
        return 0, ZERO_PADDED
    number = int(text.split(".")[0])
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        return 0, TOO_BIG if number > 0 else "below the 64-bit integer range"
    return number, ""


def stable_id_hash(ids: np.ndarray) -> np.ndarray:
    """Non-negative int64 from a string id: the first 8 bytes of BLAKE2b, stable across runs."""
    out = np.empty(len(ids), dtype=np.int64)
    for i, value in enumerate(ids):
        digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF
    return out
