"""Reference parsing and the artifact store's confinement."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from registry.errors import InvalidAdapter, InvalidName, InvalidReference, UnsafePath
from registry.refs import Ref, parse_ref, parse_tag
from registry.store import ArtifactStore


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tone", Ref(name="tone")),
        ("tone:3", Ref(name="tone", version=3)),
        ("tone@production", Ref(name="tone", alias="production")),
        ("hf://acme/tone@v2", Ref(hub_repo="acme/tone", hub_revision="v2")),
        ("hf://acme/tone", Ref(hub_repo="acme/tone")),
        ("./dir", Ref(path=Path("dir"))),
        ("/abs/dir", Ref(path=Path("/abs/dir"))),
    ],
)
def test_parse_ref(text, expected):
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == str(expected)


@pytest.mark.parametrize("text", ["", "tone:0", "tone:x", "Tone", "hf://../x", "hf://a/b@", "tone@Prod", "a b"])
def test_bad_refs(text):
    with pytest.raises((InvalidReference, InvalidName)):
        parse_ref(text)


def test_parse_tag():
    assert parse_tag("team=cx") == ("team", "cx")
    assert parse_tag("note=a=b") == ("note", "a=b")
    with pytest.raises(Exception, match="key=value"):
        parse_tag("novalue")


def test_store_confines_paths(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(UnsafePath):
        store.path("../outside")
    with pytest.raises(UnsafePath):
        store.path("/etc/passwd")
    with pytest.raises(UnsafePath):
        store.put_adapter(tmp_path / "w", "../" * 10 + "x" * 34, {})
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePath):
        store.path("link/escape")


def test_store_is_content_addressed_and_atomic(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"abc")
    store = ArtifactStore(tmp_path / "store")
    sha = hashlib.sha256(b"abc").hexdigest()
    first = store.put_adapter(weights, sha, {"r": 4})
    assert store.put_adapter(weights, sha, {"r": 4}) == first
    other = store.put_adapter(weights, sha, {"r": 8})
    assert other != first
    assert (store.path(first) / "adapter_model.safetensors").read_bytes() == b"abc"
    assert not [p for p in store.root.rglob(".tmp-*")]


def test_store_refuses_weights_that_are_not_their_sha256(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"abc")
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidAdapter, match="changed while it was registered"):
        store.put_adapter(weights, "a" * 64, {"r": 4})
    assert not [p for p in store.root.rglob("*") if p.is_file()]
