"""The teacher pass (single process): contents, resume, unreadable images, refusals, write errors, CLI."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from stand_in_teacher import StandInTeacher

from anydistill.cache import open_cache, read_manifest, run_teacher_pass
from anydistill.cache.shard_writer import ShardWriter, _HashingFile
from anydistill.cache.shards import ShardIndex, check_tar, list_shard_files
from anydistill.cli import main
from anydistill.data.io import read_image
from anydistill.data.toyworld import write_toyworld
from anydistill.errors import ConfigError, DataError

N = 10
KW = {"batch_size": 3, "shard_size": 4, "features": True, "num_workers": 0, "progress": False}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toyworld(root, count=N, size=32, domain="wide", seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "cache"
    run_teacher_pass(StandInTeacher(), images, out, **{**KW, "num_workers": 2})
    return out


def _arrays(cache_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    cache = open_cache(cache_dir, verify=True)
    return {i: cache.read(i) for i in cache.ids}


def _files(cache_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}


def _single(teacher: StandInTeacher, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: the teacher on one image, outside the pass."""
    x = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
    return teacher.predict(x)[0].numpy(), teacher.features(x)[0].numpy()


def test_pass_caches_every_image_with_the_teachers_outputs(images: Path, reference: Path) -> None:
    manifest = read_manifest(reference)
    paths = sorted((images / "images").glob("*.png"))
    ids = [p.stem for p in paths]
    assert (manifest.count, manifest.num_images, manifest.targets) == (N, N, ["disp", "feat"])
    assert [s.count for s in manifest.shards] == [4, 4, 2] and manifest.unreadable == []
    assert manifest.image_root == str((images / "images").resolve())
    teacher = StandInTeacher()
    assert manifest.teacher_fingerprint == teacher.fingerprint
    for s, entry in enumerate(manifest.shards):  # image i is in shard i // shard_size
        assert ShardIndex.load(reference / entry.index_file).ids == ids[4 * s : 4 * s + 4]
    cache = open_cache(reference, teacher_fingerprint=teacher.fingerprint, verify=True)
    assert cache.ids == ids
    for path in paths:
        got = cache.read(path.stem)
        disp, feat = _single(teacher, path)
        assert got["disp"].dtype == np.float16 and got["disp"].shape == (32, 32)
        np.testing.assert_allclose(got["disp"].astype(np.float32), disp[0], rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(got["feat"].astype(np.float32), feat, rtol=2e-3, atol=1e-3)
        record = cache.record(path.stem)
        assert record["source"] == path.name
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerun_of_a_finished_cache_changes_nothing(images: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    shutil.copytree(reference, out)
    before, manifest = _files(out), (out / "manifest.json").read_text()
    again = run_teacher_pass(StandInTeacher(), images, out, **KW)
    assert _files(out) == before and (out / "manifest.json").read_text() == manifest
    assert again.count == N


def test_resume_redoes_only_missing_or_damaged_shards(images: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    shutil.copytree(reference, out)
    (out / "manifest.json").unlink()  # as a killed pass leaves it
    (out / "shard-0-000001.tar").unlink()  # index without its tar
    with open(out / "shard-0-000002.tar", "r+b") as f:  # truncated tar
        f.truncate(1000)
    (out / "shard-0-000002.tar.tmp").write_bytes(b"partial")  # stray partial write
    kept = (out / "shard-0-000000.tar").stat().st_mtime_ns
    manifest = run_teacher_pass(StandInTeacher(), images, out, **KW)
    assert (out / "shard-0-000000.tar").stat().st_mtime_ns == kept  # the complete shard was not redone
    assert manifest.timing["written"] == 6 and manifest.count == N
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in read_manifest(reference).shards]
    assert not list(out.glob("*.tmp"))
    got, want = _arrays(out), _arrays(reference)
    assert sorted(got) == sorted(want)
    for i in want:
        for name in want[i]:
            np.testing.assert_array_equal(got[i][name], want[i][name])


def test_changed_or_removed_images_redo_their_shards(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    shutil.copytree(images / "images", root)
    out = tmp_path / "c"
    first = run_teacher_pass(StandInTeacher(), root, out, **KW)
    changed = sorted(root.glob("*.png"))[5]  # in shard 1
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(changed)
    second = run_teacher_pass(StandInTeacher(), root, out, **KW)
    shas = lambda m: [s.sha256 for s in m.shards]  # noqa: E731
    assert shas(second)[0] == shas(first)[0] and shas(second)[2] == shas(first)[2]
    assert shas(second)[1] != shas(first)[1] and second.timing["written"] == 4
    disp, _ = _single(StandInTeacher(), changed)
    np.testing.assert_allclose(open_cache(out).read(changed.stem)["disp"], disp[0], rtol=2e-3, atol=1e-3)
    for path in sorted(root.glob("*.png"))[7:]:  # 7 images left: shard 2 no longer exists
        path.unlink()
    third = run_teacher_pass(StandInTeacher(), root, out, **KW)
    assert (third.count, len(third.shards)) == (7, 2)
    assert sorted(list_shard_files(out)) == [0, 1] and not list(out.glob("*000002*"))
    assert open_cache(out, verify=True).ids == sorted(p.stem for p in root.glob("*.png"))


def test_an_image_edited_in_place_at_the_same_size_is_redone(images: Path, tmp_path: Path) -> None:
    """Same byte size, new mtime: the resume check falls back to the content hash (sha256) and redoes the
    image; same byte size and the mtime put back, the image counts as unchanged (mtime + size match)."""
    root = tmp_path / "imgs"
    root.mkdir()
    for path in sorted((images / "images").glob("*.png")):  # uncompressed PNGs: a pixel edit keeps the size
        Image.fromarray(read_image(path)).save(root / path.name, compress_level=0)
    out = tmp_path / "c"
    run_teacher_pass(StandInTeacher(), root, out, **KW)
    edited = sorted(root.glob("*.png"))[2]
    before = edited.stat()
    pixels = read_image(edited).copy()
    pixels[:8] = 255 - pixels[:8]
    Image.fromarray(pixels).save(edited, compress_level=0)
    assert edited.stat().st_size == before.st_size  # the branch under test: size alone cannot tell
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    second = run_teacher_pass(StandInTeacher(), root, out, **KW)
    assert second.timing["written"] == 4  # the edited image's shard, and only it
    disp, _ = _single(StandInTeacher(), edited)
    np.testing.assert_allclose(open_cache(out).read(edited.stem)["disp"], disp[0], rtol=2e-3, atol=1e-3)
    files = _files(out)
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 2 * 10**9))  # touched, content the same
    run_teacher_pass(StandInTeacher(), root, out, **KW)
    assert _files(out) == files  # the sha256 matched: nothing rewritten


def test_unreadable_images_are_counted_reported_and_not_fatal(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    shutil.copytree(images / "images", root)
    (root / "sub").mkdir()
    (root / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "empty.jpg").write_bytes(b"")
    out = tmp_path / "c"
    manifest = run_teacher_pass(StandInTeacher(), root, out, **KW)
    assert (manifest.num_images, manifest.count) == (N + 2, N)
    reasons = {u["source"]: u["reason"] for u in manifest.unreadable}
    assert set(reasons) == {"sub/corrupt.png", "empty.jpg"}
    assert "empty" in reasons["empty.jpg"] and reasons["sub/corrupt.png"]
    summary = manifest.summary()
    assert "2 image(s) not cached" in summary and "sub/corrupt.png" in summary and "empty.jpg" in summary
    saved = json.loads((out / "manifest.json").read_text())
    assert len(saved["unreadable"]) == 2
    cache = open_cache(out, verify=True)
    assert "sub/corrupt" not in cache and len(cache) == N
    before = _files(out)
    assert run_teacher_pass(StandInTeacher(), root, out, **KW).unreadable == manifest.unreadable
    assert _files(out) == before  # not retried while the files are unchanged


def test_a_cache_of_another_teacher_is_refused(images: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    shutil.copytree(reference, out)
    other = StandInTeacher(seed=1)
    mine = StandInTeacher().fingerprint
    with pytest.raises(DataError, match="another teacher") as e:
        run_teacher_pass(other, images, out, **KW)
    assert mine in str(e.value) and other.fingerprint in str(e.value)
    (out / "manifest.json").unlink()  # shards of an unfinished pass by another teacher
    with pytest.raises(DataError, match="another teacher"):
        run_teacher_pass(other, images, out, **KW)
    assert open_cache(reference, teacher_fingerprint=mine).manifest.count == N


@pytest.mark.parametrize("failure", ["disk full mid-shard", "permission denied"])
def test_write_errors_leave_a_consistent_cache(
    failure: str, images: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "c"
    with monkeypatch.context() as m:
        if failure == "disk full mid-shard":
            real_write = _HashingFile.write
            written = {"n": 0}

            def write(self: _HashingFile, data: bytes) -> int:
                written["n"] += len(data)
                if written["n"] > 60_000:  # in the second shard (each is 40 KiB)
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_write(self, data)

            m.setattr(_HashingFile, "write", write)
        else:
            real_init = ShardWriter.__init__

            def init(self: ShardWriter, directory: Path, index: int, rank: int, header: dict) -> None:
                if index == 2:
                    raise PermissionError(errno.EACCES, "Permission denied", str(directory / "x.tar.tmp"))
                real_init(self, directory, index, rank, header)

            m.setattr(ShardWriter, "__init__", init)
        with pytest.raises(DataError, match="rerun") as e:
            run_teacher_pass(StandInTeacher(), images, out, **KW)
    assert (
        ("No space" in str(e.value)) if failure.startswith("disk") else ("Permission denied" in str(e.value))
    )
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tmp"))
    complete = list_shard_files(out)
    assert len(complete) >= 1
    for paths in complete.values():
        for path in paths:
            ix = ShardIndex.load(path)
            check_tar(out / ix.name, ix, full=True)
    with pytest.raises(DataError, match="not a finished"):
        open_cache(out)
    manifest = run_teacher_pass(StandInTeacher(), images, out, **KW)
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in read_manifest(reference).shards]


def test_mixed_sizes_and_a_semantic_teacher(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = [(20, 28), (32, 16), (20, 28), (17, 17), (32, 16), (20, 28)]
    for k, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{k}.png")
    teacher = StandInTeacher(task="semantic", num_classes=3)
    out = tmp_path / "c"
    manifest = run_teacher_pass(
        teacher, tmp_path, out, batch_size=2, shard_size=4, num_workers=0, progress=False
    )
    assert manifest.targets == ["logits"] and manifest.count == len(sizes)
    cache = open_cache(out)
    for k, (h, w) in enumerate(sizes):
        got = cache.read(f"im{k}")["logits"]
        assert got.shape == (3, h, w) and got.dtype == np.float16
        x = torch.from_numpy(read_image(tmp_path / f"im{k}.png")).permute(2, 0, 1)[None].float() / 255
        np.testing.assert_allclose(got, teacher.predict(x)[0].numpy(), rtol=2e-3, atol=2e-3)


def test_max_size_limits_stored_targets(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    run_teacher_pass(StandInTeacher(), images, out, **{**KW, "max_size": 16, "features": False})
    cache = open_cache(out)
    assert cache.manifest.max_size == 16 and cache.read(cache.ids[0])["disp"].shape == (16, 16)


def test_bad_settings_are_config_errors(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        run_teacher_pass(StandInTeacher(), images, tmp_path / "c", batch_size=0)
    teacher = StandInTeacher()
    teacher.feature_dim = None  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="no feature encoder"):
        run_teacher_pass(teacher, images, tmp_path / "c", features=True, progress=False)
    with pytest.raises(DataError, match="no images found"):
        run_teacher_pass(StandInTeacher(), tmp_path, tmp_path / "c2", progress=False)


def test_cli_parser_runs_the_pass(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import anydistill.teachers

    seen: list[str] = []

    def load_teacher(spec: str) -> StandInTeacher:
        seen.append(spec)
        return StandInTeacher()

    monkeypatch.setattr(anydistill.teachers, "load_teacher", load_teacher, raising=False)
    out = tmp_path / "c"
    code = main(
        [
            "pseudo-label",
            "--teacher",
            "t.ckpt",
            "--images",
            str(images),
            "--out",
            str(out),
            "--shard-size",
            "4",
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--features",
        ]  # fmt: skip
    )
    assert code == 0
    assert seen == ["t.ckpt"]
    printed = capsys.readouterr().out
    assert f"cached {N} of {N} image(s) in 3 shard(s)" in printed
    assert open_cache(out).manifest.teacher_spec == "t.ckpt"


def test_a_spec_string_is_refused_with_the_way_to_pass_it(images: Path, tmp_path: Path) -> None:
    for spec in ("t.ckpt", tmp_path / "t.ckpt"):
        with pytest.raises(
            TypeError, match=r"load_teacher\(spec\).*functools\.partial\(load_teacher, spec\)"
        ):
            run_teacher_pass(spec, images, tmp_path / "c", **KW)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()  # refused before anything is written


def _load_stand_in(spec: str) -> StandInTeacher:
    """A stand-in ``load_teacher``: a teacher without a ``spec`` attribute, as the real adapters."""
    teacher = StandInTeacher(seed=int(spec.rpartition("-")[2]))
    del teacher.spec
    return teacher


def test_a_factory_is_called_and_its_spec_recorded(images: Path, reference: Path, tmp_path: Path) -> None:
    factory = functools.partial(_load_stand_in, "seed-0")
    manifest = run_teacher_pass(factory, images, tmp_path / "a", **KW)
    assert manifest.teacher_spec == "seed-0" and manifest.teacher_fingerprint == StandInTeacher().fingerprint
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in read_manifest(reference).shards]
    built = run_teacher_pass(functools.partial(StandInTeacher, seed=0), images, tmp_path / "b", **KW)
    assert built.teacher_spec == "stand-in:0"  # the built teacher's own spec attribute
    assert run_teacher_pass(_load_stand_in("seed-0"), images, tmp_path / "c", **KW).teacher_spec is None


def test_the_cache_does_not_import_the_teachers() -> None:
    code = (
        "import sys, anydistill.cache, anydistill.cache.teacher_pass, anydistill.cache.plan, "
        "anydistill.cache.writer; print(sorted(m for m in sys.modules if m.startswith('anydistill.teachers')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _BrokenOnBright(StandInTeacher):
    """Outputs +inf where the top-left pixel's red is bright, NaN where its green is: a teacher that
    fails on some inputs."""

    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        out = super().predict(images01)  # (B, 1, H, W)
        out[images01[:, 0, 0, 0] > 0.9, :, 3, 5] = float("inf")
        out[images01[:, 1, 0, 0] > 0.9, :, 0, 0] = float("nan")
        return out


def test_non_finite_teacher_outputs_are_reported_not_cached(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for k in range(4):
        img = rng.integers(0, 200, (16, 16, 3), dtype=np.uint8)
        img[0, 0, :2] = (255, 0) if k == 1 else (0, 255) if k == 2 else (0, 0)  # im1: inf, im2: NaN
        Image.fromarray(img).save(tmp_path / f"im{k}.png")
    kw = {"batch_size": 2, "shard_size": 4, "num_workers": 0, "progress": False}
    manifest = run_teacher_pass(_BrokenOnBright(), tmp_path, tmp_path / "c", **kw)
    assert manifest.count == 2 and sorted(u["id"] for u in manifest.unreadable) == ["im1", "im2"]
    assert all("non-finite" in u["reason"] for u in manifest.unreadable)
    assert open_cache(tmp_path / "c").ids == ["im0", "im3"]
