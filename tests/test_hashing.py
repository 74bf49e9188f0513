"""sagan.data.hashing: the chunked digest equals hashlib's over the whole file."""

from __future__ import annotations

import hashlib

import pytest

from sagan.data.hashing import file_digest


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_chunked_digest_equals_whole_file_digest(tmp_path, algorithm):
    data = bytes(range(256)) * 41  # 10496 bytes: several chunks and a short last one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.new(algorithm, data).hexdigest()
    assert file_digest(path, algorithm, chunk=1000) == expected
    assert file_digest(path, algorithm) == expected


def test_empty_file_and_bad_chunk(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert file_digest(path) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ValueError, match="chunk"):
        file_digest(path, chunk=0)
