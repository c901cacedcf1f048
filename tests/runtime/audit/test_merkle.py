"""The audit log's Merkle tree (``runtime.audit.merkle``) against RFC 6962 written out naively: roots
from the frontier and from tiles, inclusion and consistency proofs that verify and that reject
any tampering, the CT project's published test vectors, and that tiles spare the leaf reads."""

from __future__ import annotations

import hashlib
import random

import pytest

from runtime.audit.merkle import (
    EMPTY_ROOT,
    TILE,
    Frontier,
    Tree,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 600  # crosses two whole tiles and ends inside a third


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(records: list[bytes]) -> bytes:
    """MTH straight from RFC 6962 section 2.1, over the records themselves."""
    n = len(records)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + records[0])
    k = largest_power_below(n)
    return sha(b"\x01" + ref_mth(records[:k]) + ref_mth(records[k:]))


def ref_path(m: int, records: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) from RFC 6962 section 2.1.1."""
    n = len(records)
    if n == 1:
        return []
    k = largest_power_below(n)
    if m < k:
        return ref_path(m, records[:k]) + [ref_mth(records[k:])]
    return ref_path(m - k, records[k:]) + [ref_mth(records[:k])]


def ref_subproof(m: int, records: list[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) from RFC 6962 section 2.1.2."""
    n = len(records)
    if m == n:
        return [] if whole else [ref_mth(records)]
    k = largest_power_below(n)
    if m <= k:
        return ref_subproof(m, records[:k], whole) + [ref_mth(records[k:])]
    return ref_subproof(m - k, records[k:], False) + [ref_mth(records[:k])]


class Log:
    """Random records appended to a Frontier, with the leaf hashes and tiles a log would keep."""

    def __init__(self, size: int, seed: int = 6962) -> None:
        rng = random.Random(seed)
        self.records = [rng.randbytes(rng.randrange(0, 40)) for _ in range(size)]
        self.leaves = [leaf_hash(r) for r in self.records]
        self.tiles: dict[int, bytes] = {}
        self.frontier = Frontier()
        self.roots = [self.frontier.root()]
        for leaf in self.leaves:
            for index, tile in self.frontier.append(leaf):
                self.tiles[index] = tile
            self.roots.append(self.frontier.root())

    def tree(self, size: int | None = None, *, use_tiles: bool = True) -> Tree:
        n = len(self.leaves) if size is None else size
        return Tree(n, lambda start, end: self.leaves[start:end],
                    self.tiles.get if use_tiles else lambda index: None)


@pytest.fixture(scope="module")
def log() -> Log:
    return Log(MAX_SIZE)


@pytest.fixture(scope="module")
def ref_roots(log: Log) -> list[bytes]:
    return [ref_mth(log.records[:n]) for n in range(MAX_SIZE + 1)]


def sampled_sizes() -> list[int]:
    rng = random.Random(9162)
    edges = {1, 2, 3, 4, 5, 7, 8, 9, 255, 256, 257, 511, 512, 513, MAX_SIZE}
    return sorted(edges | set(range(1, 34)) | {rng.randrange(1, MAX_SIZE + 1) for _ in range(25)})


def sampled_indices(size: int) -> list[int]:
    rng = random.Random(size)
    candidates = {0, 1, size // 2, size - 2, size - 1, TILE - 1, TILE, 2 * TILE - 1, 2 * TILE,
                  rng.randrange(size)}
    return sorted(i for i in candidates if 0 <= i < size)


def flipped(proof: list[bytes], i: int) -> list[bytes]:
    wrong = list(proof)
    wrong[i] = bytes([wrong[i][0] ^ 0x08]) + wrong[i][1:]
    return wrong


# --- Hashing and roots ---------------------------------------------------------------------


def test_hashes_are_domain_separated() -> None:
    assert EMPTY_ROOT == sha(b"")
    assert leaf_hash(b"abc") == sha(b"\x00abc")
    left, right = leaf_hash(b"l"), leaf_hash(b"r")
    assert node_hash(left, right) == sha(b"\x01" + left + right)
    assert leaf_hash(left + right) != node_hash(left, right)


def test_frontier_and_tree_roots_match_the_rfc_definition(log: Log, ref_roots: list[bytes]) -> None:
    assert log.roots == ref_roots
    for n in range(MAX_SIZE + 1):
        assert log.tree(n).root() == ref_roots[n], n
        assert log.tree(n, use_tiles=False).root() == ref_roots[n], n
    whole = log.tree()
    assert [whole.root(n) for n in range(MAX_SIZE + 1)] == ref_roots


def test_frontier_reports_each_completed_tile_once(log: Log) -> None:
    assert sorted(log.tiles) == list(range(MAX_SIZE // TILE))
    for index, tile in log.tiles.items():
        assert tile == ref_mth(log.records[index * TILE:(index + 1) * TILE])
    frontier = Frontier()
    reported = [frontier.append(leaf) for leaf in log.leaves]
    assert [n + 1 for n, tiles in enumerate(reported) if tiles] == [TILE, 2 * TILE]
    assert all(len(tiles) <= 1 for tiles in reported)


def test_tree_hash_of_any_range_is_the_mth_of_that_range(log: Log) -> None:
    tree = log.tree()
    rng = random.Random(1)
    ranges = [(0, 0), (5, 5), (0, TILE), (TILE, 3 * TILE // 2), (100, 600), (255, 513)]
    ranges += [tuple(sorted(rng.sample(range(MAX_SIZE + 1), 2))) for _ in range(20)]
    for start, end in ranges:
        assert tree.hash(start, end) == ref_mth(log.records[start:end]), (start, end)
    with pytest.raises(ValueError):
        tree.hash(3, 2)
    with pytest.raises(ValueError):
        tree.hash(0, MAX_SIZE + 1)
    with pytest.raises(ValueError):
        tree.root(MAX_SIZE + 1)


# --- Inclusion proofs ----------------------------------------------------------------------


def test_inclusion_proofs_match_the_rfc_and_verify(log: Log, ref_roots: list[bytes]) -> None:
    tree = log.tree()
    for size in sampled_sizes():
        for index in sampled_indices(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, log.records[:size]), (index, size)
            leaf = log.leaves[index]
            assert root_from_inclusion(leaf, index, size, proof) == ref_roots[size]
            assert verify_inclusion(leaf, index, size, proof, ref_roots[size])


def test_tampered_inclusion_proofs_are_rejected(log: Log, ref_roots: list[bytes]) -> None:
    tree = log.tree()
    for size in sampled_sizes():
        root = ref_roots[size]
        for index in sampled_indices(size):
            proof = tree.inclusion_proof(index, size)
            leaf = log.leaves[index]
            for i in range(len(proof)):
                assert not verify_inclusion(leaf, index, size, flipped(proof, i), root)
            for wrong_index in (index - 1, index + 1, index ^ 2):
                if 0 <= wrong_index < size and wrong_index != index:
                    assert not verify_inclusion(leaf, wrong_index, size, proof, root)
            # The size enters only through the proof's shape: a size that gives the same shape
            # (index 0 in sizes 3 and 4) yields the same root, so probe sizes of another height.
            for wrong_size in (size * 2, size // 2):
                assert not verify_inclusion(leaf, index, wrong_size, proof, root)
            assert not verify_inclusion(leaf_hash(b"other"), index, size, proof, root)
            assert not verify_inclusion(leaf, index, size, proof, EMPTY_ROOT)
            with pytest.raises(ValueError):
                root_from_inclusion(leaf, index, size, proof + [root])
            assert not verify_inclusion(leaf, index, size, proof + [root], root)
            if proof:
                with pytest.raises(ValueError):
                    root_from_inclusion(leaf, index, size, proof[:-1])
                assert not verify_inclusion(leaf, index, size, proof[:-1], root)


def test_inclusion_bad_arguments() -> None:
    tree = Log(10).tree()
    for index, size in ((10, 10), (3, 3), (0, 0), (-1, 5)):
        with pytest.raises(ValueError):
            tree.inclusion_proof(index, size)
        with pytest.raises(ValueError):
            root_from_inclusion(EMPTY_ROOT, index, size, [])
        assert not verify_inclusion(EMPTY_ROOT, index, size, [], EMPTY_ROOT)
    with pytest.raises(ValueError):
        tree.inclusion_proof(0, 11)


# --- Consistency proofs --------------------------------------------------------------------


def consistency_pairs() -> list[tuple[int, int]]:
    sizes = sampled_sizes()
    rng = random.Random(2)
    pairs = {(m, n) for m in sizes for n in sizes if m <= n and (n < 40 or m in (1, 256, 257))}
    for _ in range(40):
        m, n = sorted(rng.sample(sizes, 2))
        pairs.add((m, n))
    return sorted(pairs)


def test_consistency_proofs_match_the_rfc_and_verify(log: Log, ref_roots: list[bytes]) -> None:
    tree = log.tree()
    for m, n in consistency_pairs():
        proof = tree.consistency_proof(m, n)
        assert proof == ref_subproof(m, log.records[:n], True), (m, n)
        assert verify_consistency(m, n, ref_roots[m], ref_roots[n], proof), (m, n)


def test_tampered_consistency_proofs_are_rejected(log: Log, ref_roots: list[bytes]) -> None:
    tree = log.tree()
    for m, n in consistency_pairs():
        if m == n:
            continue
        old, new = ref_roots[m], ref_roots[n]
        proof = tree.consistency_proof(m, n)
        for i in range(len(proof)):
            assert not verify_consistency(m, n, old, new, flipped(proof, i)), (m, n, i)
        assert not verify_consistency(m, n, ref_roots[m - 1], new, proof)
        assert not verify_consistency(m, n, old, ref_roots[n - 1], proof)
        assert not verify_consistency(m, n, new, old, proof)
        assert not verify_consistency(m, n, b"wrong root", new, proof)
        assert not verify_consistency(m, n, old, new, [])
        assert not verify_consistency(m, n, old, new, proof[:-1])
        assert not verify_consistency(m, n, old, new, proof + [old])
        assert not verify_consistency(m, n, old, new, [new] + proof)
        assert not verify_consistency(n, m, new, old, proof)
        assert not verify_consistency(m, n * 2, old, new, proof)


def test_consistency_edge_cases(log: Log, ref_roots: list[bytes]) -> None:
    root5 = ref_roots[5]
    assert verify_consistency(5, 5, root5, root5, [])
    assert not verify_consistency(5, 5, root5, ref_roots[4], [])
    assert not verify_consistency(5, 5, root5, root5, [root5])
    assert verify_consistency(0, 5, EMPTY_ROOT, root5, [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, root5, [root5])
    assert not verify_consistency(0, 5, root5, root5, [])
    assert not verify_consistency(-1, 5, EMPTY_ROOT, root5, [])
    assert not verify_consistency(6, 5, root5, root5, [root5])
    assert not verify_consistency(3, 5, ref_roots[3], root5, [b"", b"short"])
    tree = log.tree(10)
    assert tree.consistency_proof(10) == []
    for m, n in ((0, 5), (6, 5), (-1, 5), (5, 11)):
        with pytest.raises(ValueError):
            tree.consistency_proof(m, n)


# --- Known answers: certificate-transparency / transparency-dev test vectors ----------------

CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]


def hx(*hashes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


# (index, size, proof), with 0-based indices.
CT_INCLUSION = [
    (0, 8, hx("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, hx("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, hx("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]
# (old_size, new_size, proof)
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, hx("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, hx("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, hx("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, hx("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]


def test_known_answers_from_the_ct_test_vectors() -> None:
    """Values from transparency-dev/merkle (testonly/constants.go, proof/verify_test.go), the
    certificate-transparency project's RFC 6962 vectors."""
    leaves = [leaf_hash(r) for r in CT_LEAVES]
    frontier = Frontier()
    roots = [frontier.root()]
    for leaf in leaves:
        frontier.append(leaf)
        roots.append(frontier.root())
    assert roots == CT_ROOTS
    tree = Tree(8, lambda start, end: leaves[start:end], lambda index: None)
    assert [tree.root(n) for n in range(9)] == CT_ROOTS
    for index, size, proof in CT_INCLUSION:
        assert tree.inclusion_proof(index, size) == proof
        assert verify_inclusion(leaves[index], index, size, proof, CT_ROOTS[size])
    for old, new, proof in CT_CONSISTENCY:
        assert tree.consistency_proof(old, new) == proof
        assert verify_consistency(old, new, CT_ROOTS[old], CT_ROOTS[new], proof)


# --- Frontier serialization ----------------------------------------------------------------


def test_frontier_round_trips_through_bytes(log: Log) -> None:
    frontier = Frontier()
    for n, leaf in enumerate(log.leaves[:300]):
        data = frontier.to_bytes()
        assert len(data) == 8 + 32 * n.bit_count()
        copy = Frontier.from_bytes(data)
        assert (copy.size, copy.hashes) == (frontier.size, frontier.hashes)
        assert copy.root() == frontier.root()
        frontier.append(leaf)
    resumed = Frontier.from_bytes(frontier.to_bytes())
    for leaf in log.leaves[300:]:
        resumed.append(leaf)
    assert resumed.root() == log.roots[MAX_SIZE]


@pytest.mark.parametrize("data", [
    b"",
    b"\x00" * 7,
    (1).to_bytes(8, "big"),
    (2).to_bytes(8, "big") + b"\x11" * 64,
    (3).to_bytes(8, "big") + b"\x11" * 63,
    (3).to_bytes(8, "big") + b"\x11" * 65,
    (0).to_bytes(8, "big") + b"\x11" * 32,
])
def test_malformed_frontier_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        Frontier.from_bytes(data)


def test_frontier_constructor_validates() -> None:
    with pytest.raises(ValueError):
        Frontier(3, [EMPTY_ROOT])
    with pytest.raises(ValueError):
        Frontier(1, [b"short"])
    with pytest.raises(ValueError):
        Frontier(-1)
    with pytest.raises(ValueError):
        Frontier().append(b"short")
    assert Frontier(3, [EMPTY_ROOT, EMPTY_ROOT]).root() == node_hash(EMPTY_ROOT, EMPTY_ROOT)


# --- Tiles ---------------------------------------------------------------------------------


def test_tree_hashes_whole_tiles_without_reading_their_leaves() -> None:
    log = Log(4 * TILE + 5)
    tile_calls: list[int] = []
    leaf_reads: list[tuple[int, int]] = []

    def tiles(index: int) -> bytes | None:
        tile_calls.append(index)
        return log.tiles.get(index)

    def leaves(start: int, end: int) -> list[bytes]:
        leaf_reads.append((start, end))
        return log.leaves[start:end]

    tree = Tree(4 * TILE + 5, leaves, tiles)
    assert tree.hash(0, 4 * TILE) == ref_mth(log.records[:4 * TILE])
    assert sorted(tile_calls) == [0, 1, 2, 3]
    assert leaf_reads == []

    assert tree.root() == ref_mth(log.records)
    assert leaf_reads == [(4 * TILE, 4 * TILE + 5)]
    assert sorted(tile_calls) == [0, 1, 2, 3]  # memoized: no second lookup

    proof = tree.inclusion_proof(TILE + 7)
    assert verify_inclusion(log.leaves[TILE + 7], TILE + 7, tree.size, proof, tree.root())
    assert all(end - start <= TILE for start, end in leaf_reads)
    assert (TILE, 2 * TILE) in leaf_reads  # the proven leaf's own tile is read, the others not
    assert not any(start < TILE or TILE * 2 <= start < 4 * TILE for start, _ in leaf_reads)


def test_tree_without_stored_tiles_reads_at_most_a_tile_at_a_time() -> None:
    log = Log(3 * TILE + 1)
    reads: list[tuple[int, int]] = []

    def leaves(start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return log.leaves[start:end]

    tree = Tree(3 * TILE + 1, leaves, lambda index: None)
    assert tree.root() == ref_mth(log.records)
    assert sorted(reads) == [(0, TILE), (TILE, 2 * TILE), (2 * TILE, 3 * TILE),
                             (3 * TILE, 3 * TILE + 1)]
