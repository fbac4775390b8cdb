"""The remote worker's content-addressed cache: verified, safe under concurrent workers, bounded in size."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from workers.host import InputChanged
from workers.remote_host import ArtifactCache


def chunks(data: bytes, size: int = 1000):  # type: ignore[no-untyped-def]
    return lambda: iter([data[i:i + size] for i in range(0, len(data), size)])


def test_a_blob_is_fetched_once_verified_and_shared_by_concurrent_workers(tmp_path):
    data = os.urandom(50_000)
    sha = hashlib.sha256(data).hexdigest()
    calls = []

    def fetch():  # type: ignore[no-untyped-def]
        calls.append(1)
        return chunks(data)()

    caches = [ArtifactCache(tmp_path, max_bytes=1 << 30) for _ in range(8)]  # eight "workers", one folder
    paths = []
    threads = [threading.Thread(target=lambda c=c: paths.append(c.blob(sha, fetch))) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # every loser's temporary file is gone
    before = len(calls)
    assert caches[0].blob(sha, fetch) == paths[0] and len(calls) == before  # cached: no second download


def test_a_download_with_other_bytes_is_refused_and_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=1 << 30)
    with pytest.raises(InputChanged, match="sha256"):
        cache.blob("0" * 64, chunks(b"not what was announced"))
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]


def test_the_least_recently_used_blobs_go_beyond_the_size_bound(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=25_000)
    blobs = [os.urandom(10_000) for _ in range(3)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    first = cache.blob(shas[0], chunks(blobs[0]))
    folder = cache.adapter(shas[0], {"r": 4}, first)
    os.utime(first, (1, 1))  # the oldest use
    cache.blob(shas[1], chunks(blobs[1]))
    cache.blob(shas[2], chunks(blobs[2]))  # 30,000 bytes > 25,000: the least recently used goes
    kept = {p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()}
    assert kept == {shas[1], shas[2]} and not folder.exists()
