"""The Merkle tree of the audit log (v2): RFC 6962 section 2.1, as restated by RFC 9162.

The log is a list of records D[0:n]. Its Merkle Tree Hash (MTH) is defined recursively: the hash
of an empty list is ``sha256(b"")``; of one record, its leaf hash; of n > 1 records, the node hash
of MTH(D[0:k]) and MTH(D[k:n]), with k the largest power of two smaller than n. So the left part
of every node is a complete, power-of-two subtree and only the right edge can be ragged.

Domain separation: a leaf hash is ``sha256(0x00 || record)`` and a node hash is
``sha256(0x01 || left || right)``. Without the prefixes, a pair of leaf hashes could pass for a
record (``sha256(left || right)`` would be both a node and a leaf), and a proof could claim an
inner node is a leaf; the prefixes make the two kinds of input disjoint.

What each piece keeps:

- `Frontier`: the right edge of the tree, one hash per complete subtree of the current size
  (one per set bit of the size). It is all an appender needs: append one leaf hash in amortized
  O(1) and compute the root in O(log n), without reading older leaves.
- Tiles: every aligned run of `TILE` leaves ``[i*TILE, (i+1)*TILE)`` is a complete subtree;
  `Frontier.append` returns its hash the moment it completes, and the log stores it. `Tree` then
  hashes any range from stored tile hashes where a range covers whole aligned tiles, and reads
  leaf hashes only for the ragged rest, so a proof over a large log touches O(log n) tiles and
  at most a couple of tiles' worth of leaves instead of every leaf.
- Proofs: `Tree.inclusion_proof` is RFC 6962 PATH and `Tree.consistency_proof` is PROOF; the
  verifiers are the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

TILE = 256
"""Leaves per tile: a complete, aligned subtree whose hash is stored. A power of two."""

_TILE_HEIGHT = TILE.bit_length() - 1
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(record: bytes) -> bytes:
    """The hash of one record as a leaf: ``sha256(0x00 || record)``."""
    return hashlib.sha256(b"\x00" + record).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node: ``sha256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): where MTH splits n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The right edge of a tree of `size` leaves: the hashes of its maximal complete subtrees,
    largest first (one per set bit of size). Enough to append and to compute the root."""

    size: int
    hashes: list[bytes]

    def __init__(self, size: int = 0, hashes: list[bytes] | None = None) -> None:
        hashes = list(hashes or [])
        if size < 0:
            raise ValueError(f"frontier size must be >= 0, got {size}")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a frontier of size {size} has {size.bit_count()} hashes, got {len(hashes)}")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"frontier hashes must be {HASH_SIZE} bytes")
        self.size = size
        self.hashes = hashes

    def append(self, leaf: bytes) -> list[tuple[int, bytes]]:
        """Add one leaf hash; returns the (tile_index, hash) of every TILE-leaf aligned subtree
        this append completed (at most one), i.e. when size becomes a multiple of TILE the hash
        of leaves [size-TILE, size) with tile_index = size//TILE - 1."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf)}")
        completed: list[tuple[int, bytes]] = []
        merged, height, rest = leaf, 0, self.size
        # Each trailing set bit of the old size is a complete subtree as tall as the one being
        # carried: merge them, exactly like a binary increment.
        while rest & 1:
            merged = node_hash(self.hashes.pop(), merged)
            height += 1
            rest >>= 1
            if height == _TILE_HEIGHT:
                completed.append(((self.size + 1) // TILE - 1, merged))
        self.hashes.append(merged)
        self.size += 1
        return completed

    def root(self) -> bytes:
        """MTH of all leaves; `EMPTY_ROOT` when the tree is empty."""
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root

    def to_bytes(self) -> bytes:
        """8-byte big-endian size, then the hashes, largest subtree first."""
        return self.size.to_bytes(8, "big") + b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """The inverse of `to_bytes`; raises ValueError on malformed input."""
        if len(data) < 8 or (len(data) - 8) % HASH_SIZE:
            raise ValueError(f"malformed frontier: {len(data)} bytes")
        size = int.from_bytes(data[:8], "big")
        hashes = [data[i:i + HASH_SIZE] for i in range(8, len(data), HASH_SIZE)]
        return cls(size, hashes)


class Tree:
    """Computes subtree hashes from a source of leaf hashes and stored tile hashes.

    ``leaves(start, end)`` returns the leaf hashes of [start, end); ``tiles(i)`` returns the stored
    hash of tile i (leaves [i*TILE, (i+1)*TILE)) or None when it is not stored. Every subtree hash
    computed is kept for the life of the instance, so several proofs over one tree share work.
    """

    def __init__(self, size: int, leaves: Callable[[int, int], list[bytes]],
                 tiles: Callable[[int], bytes | None]) -> None:
        if size < 0:
            raise ValueError(f"tree size must be >= 0, got {size}")
        self.size = size
        self._leaves = leaves
        self._tiles = tiles
        self._memo: dict[tuple[int, int], bytes] = {}
        self._loaded: dict[int, list[bytes]] = {}

    def hash(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end): from stored tiles for aligned whole tiles, from leaf
        hashes otherwise (read a tile at a time). The MTH of an empty range is `EMPTY_ROOT`."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"range [{start}, {end}) is outside a tree of size {self.size}")
        if start == end:
            return EMPTY_ROOT
        return self._hash(start, end)

    def _hash(self, start: int, end: int) -> bytes:
        known = self._memo.get((start, end))
        if known is not None:
            return known
        n = end - start
        if n == TILE and start % TILE == 0:
            stored = self._tiles(start // TILE)
            if stored is not None:
                self._memo[(start, end)] = stored
                return stored
        if n <= TILE:
            hashes: list[bytes] = []
            for index in range(start // TILE, (end - 1) // TILE + 1):
                offset = index * TILE
                hashes += self._tile_leaves(index)[max(start - offset, 0):end - offset]
            return self._hash_loaded(start, hashes)
        k = _split(n)
        result = node_hash(self._hash(start, start + k), self._hash(start + k, end))
        self._memo[(start, end)] = result
        return result

    def _tile_leaves(self, index: int) -> list[bytes]:
        """The leaf hashes of tile `index` (cut at the tree size), read once: a proof inside a
        tile needs several of its sub-ranges, and one read serves them all."""
        cached = self._loaded.get(index)
        if cached is None:
            start, end = index * TILE, min((index + 1) * TILE, self.size)
            cached = self._leaves(start, end)
            if len(cached) != end - start:
                raise ValueError(f"leaves({start}, {end}) returned {len(cached)} hashes")
            self._loaded[index] = cached
        return cached

    def _hash_loaded(self, start: int, hashes: list[bytes]) -> bytes:
        """MTH of `hashes`, the leaves from `start` on, memoizing every subtree on the way."""
        key = (start, start + len(hashes))
        known = self._memo.get(key)
        if known is not None:
            return known
        if len(hashes) == 1:
            result = hashes[0]
        else:
            k = _split(len(hashes))
            result = node_hash(self._hash_loaded(start, hashes[:k]),
                               self._hash_loaded(start + k, hashes[k:]))
        self._memo[key] = result
        return result

    def _size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is outside a tree of size {self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all of them when size is None)."""
        return self.hash(0, self._size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 PATH(index, D[0:size]): the sibling hashes from the leaf up to the root."""
        n = self._size(size)
        if not 0 <= index < n:
            raise ValueError(f"index {index} is not in a tree of size {n}")
        return self._path(index, 0, n)

    def _path(self, index: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if index < k:
            return self._path(index, start, start + k) + [self._hash(start + k, end)]
        return self._path(index - k, start + k, end) + [self._hash(start, start + k)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 6962 PROOF(old_size, D[0:new_size]): the hashes that show the tree of old_size
        leaves is a prefix of the tree of new_size leaves. Empty when the sizes are equal."""
        n = self._size(new_size)
        if not 0 < old_size <= n:
            raise ValueError(f"no consistency proof from size {old_size} to size {n}")
        return self._subproof(old_size, 0, n, True)

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        """SUBPROOF(m, D[start:end], whole): `whole` is true while the first m leaves of this
        range are a subtree the verifier already knows the hash of (the old root)."""
        n = end - start
        if m == n:
            return [] if whole else [self._hash(start, end)]
        k = _split(n)
        if m <= k:
            return self._subproof(m, start, start + k, whole) + [self._hash(start + k, end)]
        return self._subproof(m - k, start + k, end, False) + [self._hash(start, start + k)]


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """The root implied by `leaf` at `index` in a tree of `size` leaves with `proof`
    (RFC 9162 section 2.1.3.2). Raises ValueError when index >= size or the proof has the wrong
    length for that index and size."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    root = leaf
    for sibling in proof:
        if sn == 0:
            raise ValueError(f"inclusion proof too long for index {index} in size {size}")
        if fn & 1 or fn == sn:
            root = node_hash(sibling, root)
            # The last node of a level with no right sibling is promoted unchanged.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            root = node_hash(root, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError(f"inclusion proof too short for index {index} in size {size}")
    return root


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """Whether `proof` shows `leaf` at `index` in the tree of `size` leaves whose root is `root`."""
    try:
        return root_from_inclusion(leaf, index, size, proof) == root
    except ValueError:
        return False


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: list[bytes]) -> bool:
    """Whether `proof` shows the tree of old_size leaves (root old_root) is a prefix of the tree
    of new_size leaves (root new_root); RFC 9162 section 2.1.4.2. Equal sizes need an empty proof
    and equal roots; an empty old tree needs an empty proof and the empty root. Never raises."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree of the new one: its root is the path's start.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
