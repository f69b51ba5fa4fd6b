"""The teacher pass's plan and resume check (:mod:`anydistill.cache.plan`): what a shard index records,
when a shard on disk is kept, and which teachers are accepted. Cases found by mutation testing (issue 10).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from stand_in_teacher import StandInTeacher

import anydistill.cache.plan
from anydistill.cache import open_cache, run_teacher_pass
from anydistill.cache.shards import ShardIndex
from anydistill.data.toyworld import write_toyworld
from anydistill.errors import ConfigError, DataError

N = 10
KW = {"batch_size": 3, "shard_size": 4, "features": True, "num_workers": 0, "progress": False}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toyworld(root, count=N, size=32, domain="wide", seed=0, progress=False)
    return root / "images"


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "cache"
    run_teacher_pass(StandInTeacher(), images, out, **KW)
    return out


def _copy(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "c"
    shutil.copytree(reference, out)
    return out


def test_a_shard_index_records_the_settings_it_was_made_with(reference: Path) -> None:
    """The resume check compares these fields; their names are part of the on-disk format."""
    header = ShardIndex.load(reference / "shard-0-000000.json").header
    assert isinstance(header.pop("created"), float)
    assert header == {
        "teacher": StandInTeacher().fingerprint,
        "targets": ["disp", "feat"],
        "dtype": "float16",
        "max_size": None,
        "shard_size": 4,
    }


def test_a_rerun_with_other_settings_redoes_every_shard(
    images: Path, reference: Path, tmp_path: Path
) -> None:
    out = _copy(reference, tmp_path)
    again = run_teacher_pass(StandInTeacher(), images, out, **{**KW, "max_size": 16})
    assert again.timing["written"] == N and again.max_size == 16
    cache = open_cache(out, verify=True)
    assert cache.read(cache.ids[0])["disp"].shape == (16, 16)


def test_a_shard_changed_at_the_same_size_is_redone_on_resume(
    images: Path, reference: Path, tmp_path: Path
) -> None:
    """Resume compares the sha256 (not only the size) of the shards it keeps."""
    out = _copy(reference, tmp_path)
    tar = out / "shard-0-000001.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size
    tar.write_bytes(bytes(data))
    again = run_teacher_pass(StandInTeacher(), images, out, **KW)
    assert again.timing["written"] == 4  # that shard, and only it
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in open_cache(reference).manifest.shards]
    open_cache(out, verify=True)


def test_copies_of_a_shard_from_runs_with_other_world_sizes(
    images: Path, reference: Path, tmp_path: Path
) -> None:
    """Shard 0 written by ranks 0, 1 and 2 of different runs: rank 0's index damaged, rank 2's tar gone.
    The complete copy (rank 1's) is found past the damaged one and kept; the others are removed."""
    out = _copy(reference, tmp_path)
    good = json.loads((out / "shard-0-000000.json").read_text())
    shutil.copy(out / "shard-0-000000.tar", out / "shard-1-000000.tar")
    (out / "shard-1-000000.json").write_text(json.dumps({**good, "rank": 1, "name": "shard-1-000000.tar"}))
    (out / "shard-2-000000.json").write_text(json.dumps({**good, "rank": 2, "name": "shard-2-000000.tar"}))
    (out / "shard-0-000000.json").write_text("{not json")
    (out / "manifest.json").unlink()
    again = run_teacher_pass(StandInTeacher(), images, out, **KW)
    assert again.timing["written"] == 0 and again.shards[0].name == "shard-1-000000.tar"
    assert not list(out.glob("shard-0-000000.*")) and not list(out.glob("shard-2-000000.*"))
    open_cache(out, verify=True)


def test_a_lone_manifest_of_another_teacher_is_refused(images: Path, reference: Path, tmp_path: Path) -> None:
    out = _copy(reference, tmp_path)
    for path in out.glob("shard-*"):
        path.unlink()  # only the other teacher's manifest.json is left
    with pytest.raises(DataError, match="another teacher"):
        run_teacher_pass(StandInTeacher(seed=1), images, out, **KW)
    assert (out / "manifest.json").is_file()


def test_an_unreadable_image_repaired_at_the_same_size_is_retried(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    shutil.copytree(images, root)
    good = sorted(root.glob("*.png"))[0].read_bytes()
    bad = root / "zz_repaired.png"  # sorts last: shard 2
    bad.write_bytes(good[:8] + b"\0" * (len(good) - 8))  # a PNG signature, then nothing readable
    out = tmp_path / "c"
    first = run_teacher_pass(StandInTeacher(), root, out, **KW)
    assert [u["id"] for u in first.unreadable] == ["zz_repaired"]
    before = bad.stat()
    bad.write_bytes(good)  # repaired in place: same byte size, new content
    os.utime(bad, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    second = run_teacher_pass(StandInTeacher(), root, out, **KW)
    assert second.unreadable == [] and second.count == N + 1 and second.timing["written"] == 3


def test_an_image_that_cannot_be_hashed_redoes_its_shard(
    images: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Touched (new mtime, same size) and unreadable when hashed: counted as changed, not unchanged."""
    out = _copy(reference, tmp_path)
    root = tmp_path / "imgs"
    shutil.copytree(images, root)
    touched = sorted(root.glob("*.png"))[5]  # shard 1
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    def unreadable(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(anydistill.cache.plan, "file_sha256", unreadable)
    assert run_teacher_pass(StandInTeacher(), root, out, **KW).timing["written"] == 4


class _Bare:
    """A teacher with only what the protocol requires: no ``features``, no ``feature_dim``."""

    task = "depth"
    fingerprint = "bare-teacher"

    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        return images01.mean(dim=1, keepdim=True)  # (B, 1, H, W)


def test_which_teachers_are_accepted(images: Path, tmp_path: Path) -> None:
    # a features-only teacher (SAM encoder distillation): "feat" is stored, without asking for features
    encoder = StandInTeacher(task="features")
    manifest = run_teacher_pass(encoder, images, tmp_path / "f", **{**KW, "features": False})
    cache = open_cache(tmp_path / "f")
    assert manifest.targets == ["feat"] and cache.read(cache.ids[0]).keys() == {"feat"}
    # features asked of a teacher without a features() method: a config error, not an AttributeError
    with pytest.raises(ConfigError, match="no feature encoder"):
        run_teacher_pass(_Bare(), images, tmp_path / "b", **KW)
    # a teacher with features() but no feature_dim attribute is accepted
    no_dim = StandInTeacher()
    del no_dim.feature_dim
    assert run_teacher_pass(no_dim, images, tmp_path / "d", **KW).targets == ["disp", "feat"]
    # a teacher without a task: a config error naming the tasks
    no_task = StandInTeacher()
    del no_task.task
    with pytest.raises(ConfigError, match="teacher task"):
        run_teacher_pass(no_task, images, tmp_path / "t", **KW)
