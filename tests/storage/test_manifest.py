"""Input checksums: BLAKE3, by blocks."""

import blake3
import numpy as np

from storage.manifest import block_digest, combine_digests


def test_checksums_are_blake3(tmp_path):
    """The published BLAKE3 test vector for empty input, a block hashed from the middle of a file,
    and one block's checksum as ``b3sum`` prints it."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert block_digest(empty, 0, 0).hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # more than the 1 MiB read buffer
    (tmp_path / "data").write_bytes(data)
    start, stop = 4096, 2 * (1 << 20) + 5
    assert block_digest(tmp_path / "data", start, stop) == blake3.blake3(data[start:stop]).digest()
    whole = combine_digests([block_digest(tmp_path / "data", 0, len(data))])
    assert whole == "blake3:" + blake3.blake3(data).hexdigest()


def test_a_file_that_shrank_gives_another_checksum_not_a_crash(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"x" * 10_000)
    before = block_digest(path, 0, 10_000)
    path.write_bytes(b"x" * 5_000)
    assert block_digest(path, 0, 10_000) != before
