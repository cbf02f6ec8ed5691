"""A small DER reader for the node programs (they have no X.509 library beyond the standard
one): certificates (agent's key ids) and certificate requests (the CSR approver)."""

from __future__ import annotations

from collections.abc import Iterator


class DerError(ValueError):
    """Bytes that are not the DER element they should be."""


def read(data: bytes, at: int) -> tuple[int, bytes, int]:
    """The DER element at `at`: (tag, contents, offset after it)."""
    if at + 2 > len(data):
        raise DerError("truncated")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if size == 0 or size > 4 or at + size > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise DerError("truncated")
    return tag, data[at : at + length], at + length


def children(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, contents) of each element of a constructed element's contents."""
    at = 0
    while at < len(data):
        tag, contents, at = read(data, at)
        yield tag, contents
