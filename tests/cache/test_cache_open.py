"""Opening a cache: unfinished, another teacher's, truncated or changed caches are clear DataErrors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from stand_in_teacher import StandInTeacher

from anydistill.cache import open_cache, run_teacher_pass
from anydistill.cache.shards import MemberRef, ShardIndex
from anydistill.data.toyworld import write_toyworld
from anydistill.errors import DataError


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("open")
    write_toyworld(root / "toy", count=6, size=32, domain="wide", seed=3, progress=False)
    out = root / "cache"
    run_teacher_pass(
        StandInTeacher(), root / "toy", out, batch_size=4, shard_size=4, num_workers=0, progress=False
    )
    return out


@pytest.fixture
def cache(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cache"
    shutil.copytree(finished, out)
    return out


def test_a_finished_cache_opens(cache: Path) -> None:
    opened = open_cache(cache, teacher_fingerprint=StandInTeacher().fingerprint, verify=True)
    assert len(opened) == 6 and opened.read(opened.ids[0])["disp"].shape == (32, 32)
    with pytest.raises(KeyError, match="not in the cache"):
        opened.read("nope")


def test_missing_folder_or_manifest(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such pseudo-label cache folder"):
        open_cache(tmp_path / "absent")
    (cache / "manifest.json").unlink()
    with pytest.raises(DataError, match="not a finished pseudo-label cache.*rerun the teacher pass") as e:
        open_cache(cache)
    assert e.value.path == cache


def test_corrupt_or_foreign_manifest(cache: Path) -> None:
    path = cache / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(path.read_text()[:50])
    with pytest.raises(DataError, match="unreadable manifest"):
        open_cache(cache)
    path.write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(DataError, match="not a pseudo-label cache manifest"):
        open_cache(cache)
    path.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(DataError, match="version 99"):
        open_cache(cache)


def test_wrong_teacher_names_both_fingerprints(cache: Path) -> None:
    mine, other = StandInTeacher().fingerprint, StandInTeacher(seed=7).fingerprint
    with pytest.raises(DataError, match="another teacher") as e:
        open_cache(cache, teacher_fingerprint=other)
    assert mine in str(e.value) and other in str(e.value)


def test_truncated_shard_is_named(cache: Path) -> None:
    tar = cache / "shard-0-000001.tar"
    with open(tar, "r+b") as f:
        f.truncate(tar.stat().st_size - 512)
    with pytest.raises(DataError, match="truncated or changed") as e:
        open_cache(cache)
    assert e.value.path == tar


def test_changed_shard_found_by_verify_or_on_read(cache: Path) -> None:
    ix = ShardIndex.load(cache / "shard-0-000000.json")
    sample = ix.samples[2]
    ref = MemberRef.from_dict(sample["members"]["disp"])
    tar = cache / ix.name
    data = bytearray(tar.read_bytes())
    data[ref.offset + ref.size // 2] ^= 0x01
    tar.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256") as e:
        open_cache(cache, verify=True)
    assert e.value.path == tar
    opened = open_cache(cache)  # sizes match: found when the member is read
    opened.read(ix.samples[0]["id"])
    with pytest.raises(DataError, match="checksum mismatch") as e:
        opened.read(sample["id"])
    assert e.value.path == tar and sample["id"] in str(e.value)


def test_missing_shard_or_index(cache: Path) -> None:
    (cache / "shard-0-000001.tar").unlink()
    with pytest.raises(DataError, match="shard missing"):
        open_cache(cache)
    (cache / "shard-0-000000.json").unlink()
    with pytest.raises(DataError, match="shard index missing") as e:
        open_cache(cache)
    assert e.value.path == cache / "shard-0-000000.json"
