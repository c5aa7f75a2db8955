"""federated.provenance: the Merkle tree (RFC 6962 vectors), inclusion proofs and the signed
chain of versions, and that every kind of tampering is caught."""

from __future__ import annotations

import hashlib

import pytest
from msgspec.structs import replace

from federated import protocol
from federated.provenance import (
    EMPTY_ROOT,
    LEAF_PREFIX,
    Leaf,
    ProvenanceError,
    SignedManifest,
    _root,
    check_chain,
    inclusion_proof,
    manifest_digest,
    merkle_root,
    ordered_leaves,
    verify_chain,
    verify_inclusion,
)
from federated.signing import SigningKey

# RFC 6962's reference test data (certificate-transparency merkle_tree_test): the roots of
# its first 1..8 leaves.
RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def leaves(n: int) -> list[Leaf]:
    return [
        Leaf(f"update-{i:04d}", hashlib.sha256(f"payload {i}".encode()).hexdigest())
        for i in range(n)
    ]


def test_tree_hashing_matches_rfc6962() -> None:
    hashes = [hashlib.sha256(LEAF_PREFIX + d).digest() for d in RFC6962_LEAVES]
    for n, expected in enumerate(RFC6962_ROOTS, start=1):
        assert _root(hashes[:n]).hex() == expected
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").hexdigest()


def test_the_root_does_not_depend_on_the_order_given() -> None:
    some = leaves(7)
    assert merkle_root(some) == merkle_root(list(reversed(some)))
    assert ordered_leaves(reversed(some)) == ordered_leaves(some)
    assert merkle_root(some) != merkle_root(some[:6])


def test_an_update_listed_twice_and_malformed_leaves_are_refused() -> None:
    one = leaves(1)[0]
    with pytest.raises(ProvenanceError, match="twice"):
        merkle_root([one, Leaf(one.update_id, "0" * 64)])
    with pytest.raises(ProvenanceError, match="update id"):
        Leaf("bad:id", "0" * 64)
    with pytest.raises(ProvenanceError, match="digest"):
        Leaf("update-0001", "ABC")


@pytest.mark.parametrize("size", [*range(1, 18), 64, 100])
def test_every_leaf_has_a_proof_that_verifies(size: int) -> None:
    tree = leaves(size)
    root = merkle_root(tree)
    for leaf in tree:
        for key in (leaf.update_id, leaf.payload_digest):
            proof = inclusion_proof(tree, key)
            assert proof.leaf == leaf and proof.size == size
            verify_inclusion(proof.leaf, proof.index, proof.size, proof.path, root)


def test_a_forged_proof_fails() -> None:
    tree = leaves(11)
    root = merkle_root(tree)
    proof = inclusion_proof(tree, tree[5].update_id)
    flipped = list(proof.path)
    flipped[1] = ("0" if flipped[1][0] != "0" else "1") + flipped[1][1:]
    cases = {
        "a changed sibling": (proof.leaf, proof.index, proof.size, flipped, root),
        "another index": (proof.leaf, (proof.index + 1) % 11, proof.size, proof.path, root),
        # (A size of the same depth can take the same path: which is why the size a proof
        # is checked with is the signed manifest's ``updates``, never the proof's own.)
        "another size": (proof.leaf, proof.index, 40, proof.path, root),
        "a dropped sibling": (proof.leaf, proof.index, proof.size, proof.path[:-1], root),
        "an extra sibling": (proof.leaf, proof.index, proof.size, [*proof.path, root], root),
        "another root": (proof.leaf, proof.index, proof.size, proof.path, merkle_root(tree[:10])),
        "an index past the end": (proof.leaf, 11, 11, proof.path, root),
        "a path that is not hex": (proof.leaf, proof.index, proof.size, ["zz" * 32], root),
    }
    verified = []
    for name, args in cases.items():
        try:
            verify_inclusion(*args)
        except ProvenanceError:
            continue
        verified.append(name)
    assert verified == []


def test_a_swapped_leaf_fails() -> None:
    tree = leaves(8)
    root = merkle_root(tree)
    proof = inclusion_proof(tree, tree[2].update_id)
    other = tree[3]
    with pytest.raises(ProvenanceError, match="not under root"):
        verify_inclusion(other, proof.index, proof.size, proof.path, root)
    # Same id, another payload: a receipt for a payload that is not the aggregated one.
    with pytest.raises(ProvenanceError, match="not under root"):
        verify_inclusion(
            Leaf(proof.leaf.update_id, "ab" * 32), proof.index, proof.size, proof.path, root
        )
    # A leaf hash passed off as a node (second-preimage): the prefixes keep them apart.
    node_pair = leaves(2)
    assert merkle_root(node_pair) != node_pair[0].hash().hex()


def test_a_proof_for_an_update_not_in_the_tree_cannot_be_made() -> None:
    with pytest.raises(ProvenanceError, match="not among"):
        inclusion_proof(leaves(3), "missing-update")


# --- the chain ---------------------------------------------------------------------------

KEY = SigningKey.generate()
PROJECT = "digits"


def sign(manifest: protocol.ModelManifest, key: SigningKey = KEY) -> SignedManifest:
    wire = protocol.to_wire(manifest)
    return SignedManifest(wire, key.sign(wire))


def chain(n: int, key: SigningKey = KEY) -> list[SignedManifest]:
    """Versions 0..n, signed, newest first."""
    first = protocol.ModelManifest(
        project=PROJECT,
        version=0,
        digest=hashlib.sha256(b"model 0").hexdigest(),
        created_at=1_764_000_000,
        updates_root=EMPTY_ROOT,
    )
    out = [sign(first, key)]
    for v in range(1, n + 1):
        parent = protocol.convert(dict(out[-1].manifest), protocol.ModelManifest, what="parent")
        batch = leaves(3 + v)
        out.append(
            sign(
                protocol.ModelManifest(
                    project=PROJECT,
                    version=v,
                    digest=hashlib.sha256(f"model {v}".encode()).hexdigest(),
                    created_at=1_764_000_000 + v,
                    parent_digest=parent.digest,
                    parent_manifest_digest=out[-1].digest(),
                    strategy_state_digest=hashlib.sha256(f"state {v}".encode()).hexdigest(),
                    updates_root=merkle_root(batch),
                    updates=len(batch),
                ),
                key,
            )
        )
    return list(reversed(out))


def problems(entries: list[SignedManifest], key: SigningKey = KEY) -> str:
    report = check_chain(entries, key.public_key_b64, project=PROJECT)
    assert not report.ok
    return " | ".join(report.problems)


def test_a_whole_chain_verifies_and_version_0_alone_too() -> None:
    entries = chain(4)
    manifests = verify_chain(entries, KEY.public_key_b64, project=PROJECT)
    assert [m.version for m in manifests] == [4, 3, 2, 1, 0]
    assert manifests[0].parent_manifest_digest == manifest_digest(entries[1].manifest)
    assert verify_chain(entries[-1:], KEY.public_key_b64)[0].version == 0
    assert SignedManifest.from_wire(
        {"manifest": entries[0].manifest, "signature": entries[0].signature}
    ) == SignedManifest(dict(entries[0].manifest), entries[0].signature)


def test_a_changed_digest_fails_its_signature() -> None:
    entries = chain(3)
    changed = {**entries[1].manifest, "digest": "ee" * 32}
    entries[1] = SignedManifest(changed, entries[1].signature)
    text = problems(entries)
    assert "version 2: the signature does not verify" in text
    assert "version 3 names parent model" in text  # the child, verified, says otherwise


def test_a_re_signed_changed_version_breaks_the_link_of_its_child() -> None:
    """Even the key's holder cannot rewrite history quietly: version 3 names version 2's
    model and signed manifest, so a new version 2 (another model, other updates) shows."""
    entries = chain(3)
    old = protocol.convert(dict(entries[1].manifest), protocol.ModelManifest, what="v2")
    entries[1] = sign(replace(old, digest="ee" * 32))
    text = problems(entries)
    assert "version 3 names parent model" in text and "version 3 names parent manifest" in text
    entries = chain(3)
    entries[1] = sign(replace(old, updates_root=merkle_root(leaves(2)), updates=2))
    assert "version 3 names parent manifest" in problems(entries)


def test_a_dropped_version_fails() -> None:
    entries = chain(4)
    del entries[2]
    assert "version(s) 2–2 are missing" in problems(entries)
    # Caught even when the versions around the gap fail their signatures too.
    entries[1] = SignedManifest({**entries[1].manifest, "digest": "ee" * 32}, entries[1].signature)
    assert "version(s) 2–2 are missing" in problems(entries)
    assert "the chain stops at version 1" in problems(chain(4)[:-1])


def test_versions_out_of_order_or_repeated_fail() -> None:
    entries = chain(3)
    assert "versions must run from N down to 0" in problems([entries[0], entries[0], *entries[1:]])
    assert "versions must run from N down to 0" in problems(list(reversed(entries)))
    assert problems([]) == "no versions to check"


def test_another_key_or_another_project_fails() -> None:
    other = SigningKey.generate()
    assert "signature does not verify" in problems(chain(2), other)
    foreign = chain(2)
    m = protocol.convert(dict(foreign[0].manifest), protocol.ModelManifest, what="v2")
    foreign[0] = sign(replace(m, project="tabular"))
    assert "another project" in problems(foreign)


def test_version_0_with_a_parent_or_updates_fails() -> None:
    entries = chain(1)
    genesis = protocol.convert(dict(entries[1].manifest), protocol.ModelManifest, what="v0")
    entries[1] = sign(replace(genesis, parent_digest="ab" * 32, updates=1))
    text = problems(entries)
    assert "version 0 names a parent" in text and "version 0 claims updates" in text


def test_a_version_from_before_provenance_is_reported_as_such() -> None:
    legacy = sign(
        protocol.ModelManifest(project=PROJECT, version=0, digest="ab" * 32, created_at=1)
    )
    assert legacy.manifest == {
        "project": PROJECT,
        "version": 0,
        "digest": "ab" * 32,
        "created_at": 1,
    }  # the fields of old manifests only: its old signature still verifies
    assert "before provenance" in problems([legacy])


def test_a_manifest_of_the_wrong_shape_is_reported() -> None:
    entries = chain(1)
    bad = {**entries[0].manifest, "updates": -1}
    entries[0] = SignedManifest(bad, KEY.sign(bad))
    assert "updates" in problems(entries)
    with pytest.raises(ProvenanceError, match="not a signed manifest"):
        SignedManifest.from_wire({"manifest": "x"})
