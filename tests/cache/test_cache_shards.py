"""Tar shards: member offsets agree with the stdlib tar reader, writes are atomic, damage is detected."""

from __future__ import annotations

import errno
import tarfile
from pathlib import Path

import numpy as np
import pytest

from anydistill.cache.shard_writer import ShardWriter, _HashingFile
from anydistill.cache.shards import (
    MemberRef,
    ShardIndex,
    ShardReader,
    check_tar,
    decode_npy,
    file_sha256,
    list_shard_files,
)
from anydistill.errors import DataError

HEADER = {"teacher": "abc", "targets": ["disp", "feat"]}


def _write(directory: Path, index: int = 3, rank: int = 1, n: int = 3) -> tuple[ShardIndex, dict[str, dict]]:
    rng = np.random.default_rng(index)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    with ShardWriter(directory, index, rank, HEADER) as w:
        for k in range(n):
            key = f"{index * 10 + k:09d}"
            a = {
                "disp": rng.normal(size=(5 + k, 7)).astype(np.float16),
                "feat": rng.normal(size=(4, 2, 3)).astype(np.float16),
            }
            arrays[key] = a
            record = {"id": f"dir/img.{k}", "source": f"dir/img.{k}.png", "sha256": "0" * 64}
            w.add_sample(key, record, a, {"id": record["id"]})
        w.add_unreadable(f"{index * 10 + n:09d}", {"id": "bad", "source": "bad.png", "reason": "empty file"})
    assert w.result is not None
    return w.result, arrays


def test_roundtrip_offsets_match_tarfile_and_webdataset_layout(tmp_path: Path) -> None:
    ix, arrays = _write(tmp_path)
    assert (tmp_path / "shard-1-000003.tar").is_file() and (tmp_path / "shard-1-000003.json").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    loaded = ShardIndex.load(tmp_path / "shard-1-000003.json")
    assert loaded.sha256 == file_sha256(tmp_path / "shard-1-000003.tar") == ix.sha256
    assert loaded.tar_bytes == (tmp_path / "shard-1-000003.tar").stat().st_size
    assert loaded.ids == ["dir/img.0", "dir/img.1", "dir/img.2", "bad"]
    # Independent reference: the stdlib tar reader's own member offsets and contents.
    with tarfile.open(tmp_path / "shard-1-000003.tar") as tar:
        members = {m.name: (m.offset_data, m.size, tar.extractfile(m).read()) for m in tar}  # type: ignore[union-attr]
    names = sorted(members)
    assert names[:3] == ["000000030.disp.npy", "000000030.feat.npy", "000000030.json"]  # WebDataset keys
    reader = ShardReader(loaded)
    for sample in loaded.samples:
        for name, ref in sample["members"].items():
            member = f"{sample['key']}.{name}.npy" if name != "json" else f"{sample['key']}.json"
            offset, size, data = members[member]
            r = MemberRef.from_dict(ref)
            assert (r.offset, r.size) == (offset, size)
            assert reader.read_bytes(r, member) == data
            if name != "json":
                np.testing.assert_array_equal(reader.read_array(r, member), arrays[sample["key"]][name])
                assert reader.read_array(r, member).dtype == np.float16
    assert sorted((name, off, size) for name, off, size in reader.iter_members()) == sorted(
        (n, o, s) for n, (o, s, _) in members.items()
    )
    assert decode_npy(members["000000031.disp.npy"][2]).shape == (6, 7)


def test_same_arrays_give_identical_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ia, _ = _write(a, rank=0)
    ib, _ = _write(b, rank=5)
    assert ia.sha256 == ib.sha256  # no timestamps or owners in the tar headers


def test_error_inside_writer_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, 0, 0, HEADER) as w:
        w.add_sample("000000000", {"id": "x"}, {"disp": np.zeros((2, 2), np.float16)}, {})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_removes_the_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _HashingFile.write

    def write(self: _HashingFile, data: bytes) -> int:
        if self.tell() > 2000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(_HashingFile, "write", write)
    with pytest.raises(OSError, match="No space"), ShardWriter(tmp_path, 0, 0, HEADER) as w:
        for k in range(10):
            w.add_sample(f"{k:09d}", {"id": str(k)}, {"disp": np.zeros((20, 20), np.float16)}, {})
    assert list(tmp_path.iterdir()) == []


def test_damage_is_detected(tmp_path: Path) -> None:
    ix, _ = _write(tmp_path)
    tar = tmp_path / ix.name
    check_tar(tar, ix, full=True)
    ref = MemberRef.from_dict(ix.samples[1]["members"]["disp"])
    data = bytearray(tar.read_bytes())
    data[ref.offset + ref.size - 1] ^= 0xFF  # same size, one byte of a member changed
    tar.write_bytes(bytes(data))
    check_tar(tar, ix, full=False)  # the size still matches
    with pytest.raises(DataError, match="sha256 mismatch") as e:
        check_tar(tar, ix, full=True)
    assert e.value.path == tar
    with pytest.raises(DataError, match="checksum mismatch"):
        ShardReader(ix).read_array(ref, "disp")
    tar.write_bytes(bytes(data[: ref.offset + 10]))  # truncated inside the member
    with pytest.raises(DataError, match="truncated"):
        check_tar(tar, ix, full=False)
    with pytest.raises(DataError, match="truncated"):
        ShardReader(ix).read_bytes(ref, "disp")
    tar.unlink()
    with pytest.raises(DataError, match="shard missing"):
        check_tar(tar, ix, full=False)


def test_bad_index_and_listing(tmp_path: Path) -> None:
    _write(tmp_path, index=2, rank=0)
    _write(tmp_path, index=2, rank=1)
    _write(tmp_path, index=7, rank=0)
    (tmp_path / "shard-0-000009.tar.tmp").write_bytes(b"partial")
    (tmp_path / "notes.json").write_text("{}")
    found = list_shard_files(tmp_path)
    assert sorted(found) == [2, 7] and [p.name for p in found[2]] == [
        "shard-0-000002.json",
        "shard-1-000002.json",
    ]
    bad = tmp_path / "shard-0-000007.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="unreadable shard index") as e:
        ShardIndex.load(bad)
    assert e.value.path == bad
    bad.write_text('{"version": 1}')
    with pytest.raises(DataError, match="not a valid shard index"):
        ShardIndex.load(bad)


def test_reader_survives_pickling(tmp_path: Path) -> None:
    import pickle

    ix, arrays = _write(tmp_path)
    reader = ShardReader(ix)
    ref = MemberRef.from_dict(ix.samples[0]["members"]["feat"])
    reader.read_array(ref, "feat")  # opens the file
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read_array(ref, "feat"), arrays[ix.samples[0]["key"]]["feat"])
