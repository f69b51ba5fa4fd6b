"""What the other cache tests left open (found by mutation testing, benchmarks/results/mutation.md):
the dataset's settings and non-square targets, a shard reader's verify/close, the .npy decoding, the
manifest's summary and round trip."""

from __future__ import annotations

import io
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from stand_in_teacher import StandInTeacher

from anydistill.cache import PseudoLabelDataset, open_cache, run_teacher_pass
from anydistill.cache.manifest import Manifest, ShardEntry
from anydistill.cache.shards import MemberRef, ShardIndex, ShardReader, decode_npy, encode_npy
from anydistill.data.io import read_image
from anydistill.data.toyworld import write_toyworld
from anydistill.errors import DataError

KW = {"batch_size": 2, "shard_size": 3, "num_workers": 0, "progress": False}
SIZES = [(24, 40), (40, 24), (24, 40), (30, 30), (24, 40)]  # (H, W): non-square both ways


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(toyworld folder with images/ inside, its depth cache with features: 5 images, 2 shards)."""
    root = tmp_path_factory.mktemp("toy")
    write_toyworld(root / "toy", count=5, size=32, domain="wide", seed=5, progress=False)
    run_teacher_pass(StandInTeacher(), root / "toy", root / "cache", features=True, **KW)
    return root / "toy", root / "cache"


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Non-square random images in a folder (no images/ inside)."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(2)
    for k, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"im{k}.png")
    return root


def _resized(stored: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Independent reference: bilinear (align_corners=False) resize of float16 (C, h, w) to (C, H, W)."""
    t = torch.from_numpy(stored.astype(np.float32))[None]
    return F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0].numpy()


# ------------------------------------------------------------------------------------- dataset
@pytest.mark.parametrize("task", ["depth", "semantic"])
def test_targets_stored_smaller_are_resized_to_non_square_images(
    wide: Path, tmp_path: Path, task: str
) -> None:
    """Disparity (H, W) and logits (K, H, W), stored with the long side 16, come back at each image's own
    (H, W), not a square."""
    teacher = StandInTeacher(task=task, num_classes=3)
    run_teacher_pass(teacher, wide, tmp_path / "c", max_size=16, **KW)
    ds = PseudoLabelDataset(tmp_path / "c")
    cache = open_cache(tmp_path / "c")
    name, key = ("disp", "disparity") if task == "depth" else ("logits", "logits")
    for k, (h, w) in enumerate(SIZES):
        sample = ds[k]
        assert sorted(sample) == sorted(["image", key, "id"]) and sample["id"] == f"im{k}"
        stored = cache.read(f"im{k}")[name]
        assert max(stored.shape[-2:]) == 16
        want = _resized(stored if task == "semantic" else stored[None], (h, w))
        got = sample[key]
        assert got.dtype == np.float32 and got.shape == ((h, w) if task == "depth" else (3, h, w))
        np.testing.assert_allclose(got, want[0] if task == "depth" else want, rtol=1e-6, atol=1e-6)


def test_the_image_folder_rule_and_the_recorded_root(
    toy: tuple[Path, Path], wide: Path, tmp_path: Path
) -> None:
    """``images_dir`` is DIR/images when that folder exists, else DIR itself (the pass's rule); by
    default the folder the pass recorded."""
    images, cache = toy
    assert PseudoLabelDataset(cache).images_dir == (images / "images").resolve()
    given = PseudoLabelDataset(cache, images_dir=images)  # the folder holding images/
    assert given.images_dir == images / "images"
    np.testing.assert_array_equal(given[0]["image"], read_image(images / "images" / f"{given.ids[0]}.png"))
    flat = tmp_path / "flat"
    shutil.copytree(images / "images", flat)  # the images themselves
    assert PseudoLabelDataset(cache, images_dir=flat).images_dir == flat
    with pytest.raises(DataError, match="image folder of the pseudo-label cache not found"):
        PseudoLabelDataset(cache, images_dir=tmp_path / "absent")


def test_dataset_settings_reach_the_cache(toy: tuple[Path, Path], tmp_path: Path) -> None:
    """``teacher_fingerprint`` and ``verify`` are open_cache's (verify off by default: sizes only)."""
    _, finished = toy
    cache = tmp_path / "cache"
    shutil.copytree(finished, cache)
    with pytest.raises(DataError, match="another teacher"):
        PseudoLabelDataset(cache, teacher_fingerprint=StandInTeacher(seed=3).fingerprint)
    assert len(PseudoLabelDataset(cache, teacher_fingerprint=StandInTeacher().fingerprint)) == 5
    ix = ShardIndex.load(cache / "shard-0-000001.json")  # change one byte of shard 1, same size
    ref = MemberRef.from_dict(ix.samples[0]["members"]["disp"])
    data = bytearray((cache / ix.name).read_bytes())
    data[ref.offset + 200] ^= 0x01
    (cache / ix.name).write_bytes(bytes(data))
    ds = PseudoLabelDataset(cache)  # not verified: opens, the other shard reads
    assert ds[0]["id"] == ds.ids[0]
    with pytest.raises(DataError, match="sha256") as e:
        PseudoLabelDataset(cache, verify=True)
    assert e.value.path == cache / ix.name


def test_transform_features_and_negative_indexes(toy: tuple[Path, Path]) -> None:
    _, cache = toy
    ds = PseudoLabelDataset(cache, transform=lambda s: ("transformed", s["id"]), features=True)
    assert ds.features is True and ds[1] == ("transformed", ds.ids[1])
    assert ds[-5] == ("transformed", ds.ids[0]) and ds[-1] == ("transformed", ds.ids[4])
    with pytest.raises(IndexError):
        ds[-6]
    raw = ds.load_raw(2)
    assert raw["feat"].dtype == np.float32 and raw["feat"].shape == (8, 8, 8)  # (C, h, w): not resized
    np.testing.assert_array_equal(raw["feat"], open_cache(cache).read(ds.ids[2])["feat"].astype(np.float32))
    assert PseudoLabelDataset(cache).features is False


# -------------------------------------------------------------------------------------- shards
def test_a_pickled_array_in_a_shard_is_refused() -> None:
    """Members are decoded without pickle: an object array (which would run code when unpickled) is an
    error, not loaded."""
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        decode_npy(buf.getvalue())
    np.testing.assert_array_equal(
        decode_npy(encode_npy(np.arange(6.0).reshape(2, 3))), np.arange(6.0).reshape(2, 3)
    )


def test_member_refs_round_trip_with_their_shape_and_dtype() -> None:
    ref = MemberRef(1536, 400, 12345, (3, 4, 5), "float16")
    assert MemberRef.from_dict(ref.to_dict()) == ref
    assert ref.to_dict() == {
        "offset": 1536,
        "size": 400,
        "crc32": 12345,
        "shape": [3, 4, 5],
        "dtype": "float16",
    }
    assert MemberRef.from_dict({"offset": "7", "size": 8, "crc32": 9}) == MemberRef(7, 8, 9, (), "")


def test_a_reader_verifies_its_shard_and_reopens_after_close(toy: tuple[Path, Path], tmp_path: Path) -> None:
    _, finished = toy
    cache = tmp_path / "cache"
    shutil.copytree(finished, cache)
    ix = ShardIndex.load(cache / "shard-0-000000.json")
    reader = ShardReader(ix)
    assert reader.tar_path == cache / ix.name  # next to its index by default
    reader.verify()
    ref = MemberRef.from_dict(ix.samples[0]["members"]["feat"])
    first = reader.read_array(ref, "feat")
    handle = reader._handle()
    reader.close()
    assert handle.closed
    np.testing.assert_array_equal(reader.read_array(ref, "feat"), first)  # reopened
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read_array(ref, "feat"), first)
    data = bytearray((cache / ix.name).read_bytes())
    data[-600] ^= 0x01  # same size: only the sha256 can tell
    (cache / ix.name).write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256 mismatch") as e:
        reader.verify()
    assert e.value.path == cache / ix.name
    opened = open_cache(cache)  # PseudoLabelCache.verify: every reader's
    with pytest.raises(DataError, match="sha256 mismatch"):
        opened.verify()
    opened.close()
    (cache / ix.name).unlink()
    with pytest.raises(DataError, match="shard missing"):
        reader.verify()


# ------------------------------------------------------------------------------------ manifest
def _manifest(**changes) -> Manifest:
    fields = {
        "teacher_fingerprint": "0123456789abcdef" * 4,
        "teacher_spec": "t.ckpt",
        "task": "depth",
        "image_root": "/data/images",
        "targets": ["disp", "feat"],
        "shard_size": 4,
        "num_images": 7,
        "count": 5,
        "shards": [ShardEntry("shard-0-000000.tar", 0, "shard-0-000000.json", 4, 40960, "ab" * 32),
                   ShardEntry("shard-1-000001.tar", 1, "shard-1-000001.json", 1, 10240, "cd" * 32)],
        "unreadable": [{"id": "a", "source": "a.png", "reason": "empty file"},
                       {"id": "b/c", "source": "b/c.jpg", "reason": "truncated"}],
        "timing": {"seconds": 2.46, "written": 5, "images_per_second": 2.03, "world_size": 2},
    }  # fmt: skip
    return Manifest(**{**fields, **changes})


def test_manifest_summary_exact_text() -> None:
    assert _manifest().summary() == (
        "cached 5 of 7 image(s) in 2 shard(s) (targets disp, feat; teacher 0123456789ab)\n"
        "this run: 5 image(s) in 2.5 s (2.0 img/s, 2 process(es))\n"
        "2 image(s) not cached:\n"
        "  a.png: empty file\n"
        "  b/c.jpg: truncated"
    )
    # a rerun that wrote nothing: no timing line; missing timing fields have their defaults
    assert _manifest(unreadable=[], timing={"written": 0, "seconds": 9.0}).summary() == (
        "cached 5 of 7 image(s) in 2 shard(s) (targets disp, feat; teacher 0123456789ab)"
    )
    assert _manifest(unreadable=[], timing={"written": 3}).summary().splitlines()[1] == (
        "this run: 3 image(s) in 0.0 s (0.0 img/s, 1 process(es))"
    )


def test_manifest_round_trip() -> None:
    manifest = _manifest(max_size=16, dtype="float32")  # the recorded dtype is read back, not assumed
    d = manifest.to_dict()
    assert list(d)[:3] == ["format", "version", "teacher"]
    assert d["teacher"] == {"fingerprint": "0123456789abcdef" * 4, "spec": "t.ckpt", "task": "depth"}
    assert Manifest.from_dict(d) == manifest


def test_a_reader_keeps_one_open_file_per_process(toy: tuple[Path, Path]) -> None:
    _, cache = toy
    reader = ShardReader(ShardIndex.load(cache / "shard-0-000000.json"))
    handle = reader._handle()
    ref = MemberRef.from_dict(reader.index.samples[1]["members"]["disp"])
    reader.read_array(ref, "disp")
    assert reader._handle() is handle and not handle.closed  # reused, not reopened per read
    reader.close()


@pytest.mark.parametrize("field", ["sha256", "bytes", "name"])
def test_an_index_that_differs_from_the_manifest_in_one_field_is_refused(
    toy: tuple[Path, Path], tmp_path: Path, field: str
) -> None:
    import json

    _, finished = toy
    cache = tmp_path / "cache"
    shutil.copytree(finished, cache)
    path = cache / "manifest.json"
    data = json.loads(path.read_text())
    entry = data["shards"][1]
    entry[field] = {"sha256": "0" * 64, "bytes": entry["bytes"] + 512, "name": "shard-9-000001.tar"}[field]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="does not match the manifest") as e:
        open_cache(cache)
    assert e.value.path == cache / entry["index_file"]


def test_an_id_not_in_the_cache_names_the_cache(toy: tuple[Path, Path]) -> None:
    _, cache = toy
    opened = open_cache(cache)
    assert opened.ids[0] in opened and "absent" not in opened
    for call in (opened.read, opened.record):
        with pytest.raises(KeyError, match="'absent' is not in the cache") as e:
            call("absent")
        assert str(cache) in str(e.value)


# --------------------------------------------------------------------------------- the pass's side
def test_is_global_zero_reads_rank_then_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from anydistill.cache.teacher_pass import is_global_zero

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_global_zero()  # torchrun / Fabric without RANK
    monkeypatch.setenv("RANK", "0")
    assert is_global_zero()  # RANK, when set, decides over LOCAL_RANK
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not is_global_zero()  # local rank 0 of another node


def test_an_image_that_fails_outside_the_decoder_is_an_error_record(tmp_path: Path) -> None:
    """Any exception while reading (here the file vanished after the listing) becomes the record's
    ``error``, ``<type>: <message>``, never an exception in the DataLoader worker."""
    from anydistill.cache.plan import _Item
    from anydistill.cache.writer import _ImageReader

    gone = tmp_path / "gone.png"
    record = _ImageReader([_Item(4, "gone", str(gone), "gone.png")])[0]
    assert record["error"].startswith("FileNotFoundError: ") and str(gone) in record["error"]
    assert (record["index"], record["id"], record["source"], record["path"]) == (
        4,
        "gone",
        "gone.png",
        str(gone),
    )
    assert "image" not in record


def _teacher_input(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)


def test_each_sample_has_its_json_member_and_plain_tar_headers(wide: Path, tmp_path: Path) -> None:
    """``<key>.json`` in the tar (what WebDataset readers get): id, source, sha256, [H, W], teacher, with
    sorted keys; member headers without time or owner (mtime 0, mode 644, uid/gid 0); the index records
    each array member's shape and dtype."""
    import hashlib
    import json
    import tarfile

    teacher = StandInTeacher()
    run_teacher_pass(teacher, wide, tmp_path / "c", features=True, **KW)
    raw: dict[str, bytes] = {}
    for tar_path in sorted((tmp_path / "c").glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                assert (member.mtime, member.mode, member.uid, member.gid) == (0, 0o644, 0, 0), member.name
                assert (member.uname, member.gname) == ("", ""), member.name
                if member.name.endswith(".json"):
                    raw[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert sorted(raw) == [f"{k:09d}.json" for k in range(len(SIZES))]
    for k, (h, w) in enumerate(SIZES):
        path = wide / f"im{k}.png"
        meta = {
            "id": f"im{k}",
            "image_size": [h, w],
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "source": f"im{k}.png",
            "teacher": teacher.fingerprint,
        }
        assert raw[f"{k:09d}.json"] == json.dumps(meta, sort_keys=True).encode()
    for index in sorted((tmp_path / "c").glob("shard-*.json")):
        for sample in ShardIndex.load(index).samples:
            h, w = SIZES[int(sample["key"])]
            members = sample["members"]
            assert (members["disp"]["shape"], members["disp"]["dtype"]) == ([h, w], "float16")
            assert (members["feat"]["shape"], members["feat"]["dtype"]) == ([8, h // 4, w // 4], "float16")
            assert (members["json"]["shape"], members["json"]["dtype"]) == ([], "")


def test_stored_targets_are_downscaled_with_antialiasing(wide: Path, tmp_path: Path) -> None:
    """max_size: the long side to 16 by antialiased bilinear (align_corners=False), as an independent
    F.interpolate of the teacher's own output; features are never resized."""
    teacher = StandInTeacher()
    run_teacher_pass(teacher, wide, tmp_path / "c", max_size=16, features=True, **KW)
    cache = open_cache(tmp_path / "c")
    for k, (h, w) in enumerate(SIZES):
        x = _teacher_input(wide / f"im{k}.png")
        pred = teacher.predict(x)  # (1, 1, H, W)
        size = (round(h * 16 / max(h, w)), round(w * 16 / max(h, w)))
        want = F.interpolate(pred, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
        plain = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)[0, 0]
        got = cache.read(f"im{k}")
        assert got["disp"].shape == size and got["feat"].shape == (8, h // 4, w // 4)
        np.testing.assert_allclose(got["disp"].astype(np.float32), want.numpy(), rtol=2e-3, atol=1e-3)
        assert np.abs(got["disp"].astype(np.float32) - plain.numpy()).max() > 0.01  # the test can tell
        np.testing.assert_allclose(
            got["feat"].astype(np.float32), teacher.features(x)[0].numpy(), rtol=2e-3, atol=1e-3
        )


def test_a_thin_image_keeps_at_least_one_pixel_per_side(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for name, (h, w) in {"row": (2, 40), "column": (40, 2)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    run_teacher_pass(StandInTeacher(), tmp_path, tmp_path / "c", max_size=8, **KW)
    cache = open_cache(tmp_path / "c")
    assert cache.read("row")["disp"].shape == (1, 8) and cache.read("column")["disp"].shape == (8, 1)


class _Huge(StandInTeacher):
    """Logits far beyond the float16 range, of both signs."""

    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        return super().predict(images01) * 1e7


def test_values_beyond_the_float16_range_are_clipped_not_infinite(wide: Path, tmp_path: Path) -> None:
    teacher = _Huge(task="semantic", num_classes=3)
    manifest = run_teacher_pass(teacher, wide, tmp_path / "c", **KW)
    assert manifest.count == len(SIZES) and manifest.unreadable == []  # finite outputs: all cached
    logits = np.stack([open_cache(tmp_path / "c").read(f"im{k}")["logits"].ravel()[:200] for k in (0, 2, 4)])
    assert np.isfinite(logits).all()
    assert logits.max() == 65504.0 and logits.min() == -65504.0


class _NonFinite(StandInTeacher):
    """NaN disparity for images whose top-left red is bright; NaN features when their green is too."""

    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        out = super().predict(images01)
        out[images01[:, 0, 0, 0] > 0.9] = float("nan")
        return out

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        out = super().features(images01)
        out[images01[:, 1, 0, 0] > 0.9] = float("nan")
        return out


def test_the_reason_names_every_non_finite_target(tmp_path: Path) -> None:
    for k, (red, green) in enumerate([(0, 0), (255, 255), (0, 255)]):
        img = np.full((8, 8, 3), 100, np.uint8)
        img[0, 0, :2] = (red, green)
        Image.fromarray(img).save(tmp_path / f"im{k}.png")
    manifest = run_teacher_pass(_NonFinite(), tmp_path, tmp_path / "c", features=True, **KW)
    assert manifest.count == 1 and {u["id"]: u["reason"] for u in manifest.unreadable} == {
        "im1": "teacher output has non-finite values (disp, feat)",
        "im2": "teacher output has non-finite values (feat)",
    }


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_float16_autocast_only_for_a_cuda_teacher_when_asked() -> None:
    import contextlib

    from anydistill.cache.writer import _autocast

    for device, enabled in (("cpu", True), ("cpu", False), ("cuda", False)):
        assert isinstance(_autocast(torch.device(device), enabled), contextlib.nullcontext)
    cuda = _autocast(torch.device("cuda"), True)  # built (not entered) on this CPU machine too
    assert isinstance(cuda, torch.autocast) and cuda.device == "cuda" and cuda.fast_dtype == torch.float16


# ------------------------------------------------------------------------------- batching, progress
A, C, B = (20, 28), (24, 28), (28, 20)  # A and C: the same width, other heights
BATCH_SIZES = [A, C, A, C, B, B, A, C, A, A, B, B]  # image k's size; 2 shards of 6


class _Recording(StandInTeacher):
    """Records the images (their numbers, encoded in the top-left red value) of each predict call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[int]] = []

    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        self.calls.append([round(float(v) * 255) // 20 for v in images01[:, 0, 0, 0]])
        return super().predict(images01)


def test_teacher_batches_follow_the_documented_bucketing(tmp_path: Path) -> None:
    """Loader batches of 2 never straddle a shard; a full same-size group runs as is when no image of its
    size waits; smaller groups wait in a per-size bucket until it holds 2 images or the shard ends (by
    hand: shard 0 runs [0, 2], [1, 3], [4, 5]; shard 1 runs [6, 8] (6 waited), [10, 11], then the
    leftovers 9 and 7 at its end)."""
    rng = np.random.default_rng(4)
    images = tmp_path / "imgs"
    images.mkdir()
    for k, (h, w) in enumerate(BATCH_SIZES):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[0, 0, 0] = 20 * k
        Image.fromarray(pixels).save(images / f"im{k:02d}.png")
    teacher = _Recording()
    kw = {**KW, "shard_size": 6}
    manifest = run_teacher_pass(teacher, images, tmp_path / "c", **kw)
    assert teacher.calls == [[0, 2], [1, 3], [4, 5], [6, 8], [10, 11], [9], [7]]
    assert manifest.count == 12 and [s.count for s in manifest.shards] == [6, 6]
    cache = open_cache(tmp_path / "c")
    for k in (1, 7, 9):
        want = StandInTeacher().predict(_teacher_input(images / f"im{k:02d}.png"))[0, 0].numpy()
        np.testing.assert_allclose(cache.read(f"im{k:02d}")["disp"], want, rtol=2e-3, atol=1e-3)


def test_the_progress_bar_counts_images_and_unreadable_ones(
    toy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, _ = toy
    flat = tmp_path / "flat"
    shutil.copytree(images / "images", flat)
    (flat / "empty.png").write_bytes(b"")
    (flat / "junk.png").write_bytes(b"not a png")
    run_teacher_pass(StandInTeacher(), flat, tmp_path / "c", **{**KW, "progress": True})
    last = capsys.readouterr().err.strip().split("\r")[-1].strip()  # tqdm may pad the line with spaces
    assert re.fullmatch(r"teacher pass \(rank 0\): 100%\|.*\| 7/7 \[.*(img/s|s/img), unreadable=2\]", last), (
        last
    )
    run_teacher_pass(StandInTeacher(), flat, tmp_path / "c2", **KW)  # progress=False
    assert "teacher pass" not in capsys.readouterr().err


def test_images_are_read_in_dataloader_workers(toy: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    import os

    from anydistill.cache import writer

    log = tmp_path / "pids"
    real = writer.read_image

    def read_image(path):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(path)

    monkeypatch.setattr(writer, "read_image", read_image)
    images, _ = toy
    run_teacher_pass(StandInTeacher(), images, tmp_path / "c", **{**KW, "num_workers": 2})
    pids = log.read_text().split()
    assert len(pids) == 5 and str(os.getpid()) not in pids


# ----------------------------------------------------------------------------------------- merge
def test_the_manifest_records_shards_task_and_exact_timing(wide: Path, tmp_path: Path, monkeypatch) -> None:
    """timing: seconds since the pass began (3 decimals), images written in this run (cached and
    unreadable), their rate, the world size; a zero-second pass has rate 0, not a division by zero."""
    import json
    from types import SimpleNamespace

    from anydistill.cache import teacher_pass, writer

    images = tmp_path / "imgs"
    shutil.copytree(wide, images)
    (images / "zz_empty.png").write_bytes(b"")
    monkeypatch.setattr(teacher_pass, "time", SimpleNamespace(time=lambda: 1000.0))  # the pass begins
    monkeypatch.setattr(writer, "time", SimpleNamespace(time=lambda: 1000.4567))  # the merge
    manifest = run_teacher_pass(StandInTeacher(task="semantic"), images, tmp_path / "c", **KW)
    assert manifest.timing == {"seconds": 0.457, "written": 6, "images_per_second": 13.138, "world_size": 1}
    assert manifest.task == "semantic" and manifest.count == 5 and manifest.num_images == 6
    assert [(e.index, e.count, e.name, e.index_file) for e in manifest.shards] == [
        (0, 3, "shard-0-000000.tar", "shard-0-000000.json"),
        (1, 2, "shard-0-000001.tar", "shard-0-000001.json"),
    ]
    saved = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert saved["teacher"]["task"] == "semantic" and saved["timing"] == manifest.timing
    assert [s["index"] for s in saved["shards"]] == [0, 1]
    monkeypatch.setattr(writer, "time", SimpleNamespace(time=lambda: 1000.0))
    zero = run_teacher_pass(StandInTeacher(), wide, tmp_path / "c0", **KW)
    assert zero.timing == {"seconds": 0.0, "written": 5, "images_per_second": 0.0, "world_size": 1}
    assert zero.task == "depth"


def test_a_rerun_after_the_last_shard_lost_its_images_rewrites_the_manifest(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    """Nothing to write, but fewer shards than the old manifest lists: a new manifest, not the old one."""
    images, _ = toy
    flat = tmp_path / "flat"
    shutil.copytree(images / "images", flat)
    first = run_teacher_pass(StandInTeacher(), flat, tmp_path / "c", **KW)
    assert [s.count for s in first.shards] == [3, 2]
    for path in sorted(flat.glob("*.png"))[3:]:
        path.unlink()
    again = run_teacher_pass(StandInTeacher(), flat, tmp_path / "c", **KW)
    assert again.timing["written"] == 0 and (again.count, len(again.shards)) == (3, 1)
    assert open_cache(tmp_path / "c", verify=True).ids == sorted(p.stem for p in flat.glob("*.png"))


def test_a_rerun_rewrites_an_unreadable_manifest_and_sweeps_stray_files(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    """A finished cache whose manifest.json is garbage, with a tar without an index and a stray .tmp: the
    rerun writes nothing, rewrites the manifest and removes the strays; other files stay. An index
    without ``created`` (the time it was written) counts as written before this run."""
    import json

    images, finished = toy
    cache = tmp_path / "cache"
    shutil.copytree(finished, cache)
    (cache / "manifest.json").write_text("{garbage")
    (cache / "shard-3-000001.tar").write_bytes(b"\0" * 1024)  # another run's tar, its index gone
    (cache / "shard-0-000007.tar.tmp").write_bytes(b"partial")
    (cache / "notes.txt").write_text("mine")
    index = cache / "shard-0-000001.json"
    data = json.loads(index.read_text())
    del data["header"]["created"]
    index.write_text(json.dumps(data))
    manifest = run_teacher_pass(StandInTeacher(), images, cache, features=True, **KW)
    assert manifest.timing["written"] == 0 and manifest.count == 5
    assert sorted(p.name for p in cache.iterdir()) == [
        "manifest.json", "notes.txt", "shard-0-000000.json", "shard-0-000000.tar", "shard-0-000001.json",
        "shard-0-000001.tar",
    ]  # fmt: skip
    assert open_cache(cache, verify=True).manifest == manifest


def test_a_shard_gone_before_the_merge_is_a_data_error(
    toy: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    from anydistill.cache import writer

    images, _ = toy
    real = writer.list_shard_files
    monkeypatch.setattr(writer, "list_shard_files", lambda d: {k: v for k, v in real(d).items() if k != 1})
    with pytest.raises(DataError, match="shard 1 is missing after the pass") as e:
        run_teacher_pass(StandInTeacher(), images, tmp_path / "c", **KW)
    assert e.value.path == tmp_path / "c"


# ------------------------------------------------------------------------- a Fabric rank, in-process
class _FakeFabric:
    """What _fabric_entry uses of Lightning Fabric: one rank of ``world``; all_reduce as the sum over
    ranks that all succeeded (the tensor itself)."""

    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size, self.device = rank, world, torch.device("cpu")
        self.reduced: list[float] = []

    def all_reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        self.reduced.append(float(tensor))
        return tensor


def test_a_fabric_rank_runs_its_shards_with_its_share_of_the_cores(
    toy: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    """Rank r of W does the shards s with s % W == r, with cores // W intra-op threads; rank 0 merges
    (here the other rank's shard comes from an earlier single-process pass)."""
    import os

    from anydistill.cache.plan import _Settings
    from anydistill.cache.teacher_pass import _fabric_entry

    images, finished = toy
    cache = tmp_path / "cache"
    shutil.copytree(finished, cache)
    (cache / "manifest.json").unlink()
    (cache / "shard-0-000000.json").unlink()  # rank 0's shard: to redo
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    threads = torch.get_num_threads()
    fabric = _FakeFabric(0, 2)
    settings = _Settings(2, 3, True, None, 0, False, True)
    try:
        manifest = _fabric_entry(fabric, StandInTeacher(), images, cache, settings)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert fabric.reduced == [0.0, 0.0, 0.0]  # three failure-aware syncs, none failed
    assert manifest.timing["world_size"] == 2 and manifest.timing["written"] == 3 and manifest.count == 5
    assert [s.name for s in manifest.shards] == ["shard-0-000000.tar", "shard-0-000001.tar"]
    other = _FakeFabric(1, 2)  # rank 1: its shard is complete, no merge, reads rank 0's manifest
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    try:
        assert _fabric_entry(other, StandInTeacher(), images, cache, settings) == manifest
        assert torch.get_num_threads() == 1  # at least one thread
        monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one core assumed
        assert _fabric_entry(_FakeFabric(0, 1), StandInTeacher(), images, cache, settings).count == 5
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_failure_aware_sync() -> None:
    """One all_reduce(sum) of "this rank failed" per sync: a rank's own error is raised there, and the
    ranks without one raise a DataError saying another process failed."""
    from anydistill.cache.teacher_pass import _Dist

    out = Path("/cache")
    ok = _FakeFabric(0, 2)
    _Dist(0, 2, ok).sync(None, out)
    assert ok.reduced == [0.0]
    mine = _FakeFabric(1, 2)
    with pytest.raises(RuntimeError, match="boom"):
        _Dist(1, 2, mine).sync(RuntimeError("boom"), out)
    assert mine.reduced == [1.0]

    class OtherRankFailed(_FakeFabric):
        def all_reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
            return super().all_reduce(tensor, reduce_op) + 1.0  # the other rank sent 1

    with pytest.raises(DataError, match="another process of the teacher pass failed") as e:
        _Dist(0, 2, OtherRankFailed(0, 2)).sync(None, out)
    assert e.value.path == out
    _Dist().sync(None, out)  # one process: no collective
    with pytest.raises(KeyError):
        _Dist().sync(KeyError("x"), out)


class _TrainMode(StandInTeacher):
    """Starts in train mode; records where it was moved."""

    def __init__(self) -> None:
        super().__init__()
        self.train()
        self.moved_to: list[torch.device] = []

    def to(self, device):  # type: ignore[override]
        self.moved_to.append(device)
        return super().to(device)


def test_the_pass_puts_the_teacher_on_its_device_in_eval_mode_and_makes_nested_folders(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    images, _ = toy
    teacher = _TrainMode()
    out = tmp_path / "not" / "yet" / "cache"
    manifest = run_teacher_pass(teacher, images, out, accelerator="cpu", **KW)
    assert teacher.moved_to == [torch.device("cpu")] and not teacher.training
    assert manifest.count == 5 and (out / "manifest.json").is_file()


def test_which_device_a_one_process_pass_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from anydistill.cache.teacher_pass import _single_device
    from anydistill.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only asked, never used here
    for accelerator, device in {"auto": "cuda", "cuda": "cuda", "gpu": "cuda", "cpu": "cpu"}.items():
        assert _single_device(accelerator) == torch.device(device), accelerator
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _single_device("auto") == _single_device("cpu") == torch.device("cpu")
    for accelerator in ("cuda", "gpu"):
        with pytest.raises(ConfigError, match=f"accelerator='{accelerator}' but CUDA is not available"):
            _single_device(accelerator)


def test_run_teacher_pass_defaults_and_the_fabric_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defaults: batches of 16, shards of 256, no features, full size, 2 reader workers, a progress bar,
    one process on the best device, float16 autocast on CUDA; ``devices > 1`` launches Fabric (ddp)."""
    from anydistill.cache import teacher_pass
    from anydistill.cache.plan import _Settings

    seen: dict = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(teacher_pass, "_run_rank", lambda *args: seen.setdefault("rank", args) and "manifest")
    teacher = StandInTeacher()
    assert run_teacher_pass(teacher, str(tmp_path / "imgs"), str(tmp_path / "c")) == "manifest"
    dist, device, given, images_dir, out, settings = seen["rank"]
    assert (dist.rank, dist.world, dist.fabric) == (0, 1, None) and device == torch.device("cpu")
    assert given is teacher and (images_dir, out) == (tmp_path / "imgs", tmp_path / "c")
    assert settings == _Settings(16, 256, False, None, 2, True, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # "auto" picks CUDA when there is one
    seen.clear()
    run_teacher_pass(teacher, tmp_path, tmp_path / "c")
    assert seen["rank"][1] == torch.device("cuda")

    class FakeFabric:
        def __init__(self, **kwargs) -> None:
            seen["fabric"] = kwargs

        def launch(self, fn, *args):
            seen["launch"] = (fn, args)
            return "launched"

    monkeypatch.setattr(teacher_pass, "Fabric", FakeFabric)
    assert (
        run_teacher_pass(teacher, tmp_path, tmp_path / "c", devices=2, max_size=8, autocast=False)
        == "launched"
    )
    assert seen["fabric"] == {"accelerator": "auto", "devices": 2, "strategy": "ddp"}
    fn, args = seen["launch"]
    assert fn is teacher_pass._fabric_entry and args[:3] == (teacher, tmp_path, tmp_path / "c")
    assert args[3] == _Settings(16, 256, False, 8, 2, True, False)


@pytest.mark.parametrize("name", ["batch_size", "shard_size", "devices"])
def test_a_bad_count_is_one_line_naming_it(tmp_path: Path, name: str) -> None:
    from anydistill.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        run_teacher_pass(StandInTeacher(), tmp_path, tmp_path / "c", **{name: 0})
    assert str(e.value) == f"{name} must be a positive integer, got 0"


class _FailsAt(_FakeFabric):
    """The other rank reports a failure at sync number ``at`` (1-based)."""

    def __init__(self, rank: int, world: int, at: int) -> None:
        super().__init__(rank, world)
        self.at = at

    def all_reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        out = super().all_reduce(tensor, reduce_op)
        return out + 1.0 if len(self.reduced) == self.at else out


def _settings(**changes):
    from anydistill.cache.plan import _Settings

    return _Settings(**{"batch_size": 2, "shard_size": 3, "features": True, "max_size": None, "num_workers": 0,
                        "progress": False, "autocast": True, **changes})  # fmt: skip


@pytest.mark.parametrize("at", [1, 2, 3])
def test_another_ranks_failure_is_raised_at_each_sync(
    toy: tuple[Path, Path], tmp_path: Path, at: int
) -> None:
    """After planning, after writing, after the merge: a failure elsewhere stops this rank there, with a
    DataError naming the cache folder."""
    from anydistill.cache.teacher_pass import _fabric_entry

    images, finished = toy
    cache = tmp_path / "cache"
    shutil.copytree(finished, cache)
    fabric = _FailsAt(0, 2, at)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(DataError, match="another process of the teacher pass failed") as e:
            _fabric_entry(fabric, StandInTeacher(), images, cache, _settings())
    finally:
        torch.set_num_threads(threads)
    assert e.value.path == cache and len(fabric.reduced) == at


def test_a_ranks_own_failure_is_announced_at_the_first_sync(toy: tuple[Path, Path], tmp_path: Path) -> None:
    """An error while planning (here features asked of a teacher without them) is sent to the other ranks
    at once, so they stop before writing anything."""
    from anydistill.cache.teacher_pass import _fabric_entry
    from anydistill.errors import ConfigError

    images, _ = toy
    teacher = StandInTeacher()
    teacher.feature_dim = None  # type: ignore[assignment]
    fabric = _FakeFabric(1, 2)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ConfigError, match="no feature encoder"):
            _fabric_entry(fabric, teacher, images, tmp_path / "c", _settings())
    finally:
        torch.set_num_threads(threads)
    assert fabric.reduced == [1.0] and not list((tmp_path / "c").glob("shard-*"))


def test_each_rank_writes_every_world_th_shard(toy: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    from anydistill.cache import teacher_pass

    images, _ = toy
    todos: list[list[int]] = []
    real = teacher_pass._write_shards
    monkeypatch.setattr(
        teacher_pass, "_write_shards", lambda r, p, todo, *a: (todos.append(list(todo)), real(r, p, todo, *a))
    )
    threads = torch.get_num_threads()
    try:  # rank 0 of 2, shards of one image: it writes 0, 2, 4; rank 1's are missing at the merge
        with pytest.raises(DataError, match="shard 1 is missing after the pass"):
            teacher_pass._fabric_entry(
                _FakeFabric(0, 2), StandInTeacher(), images, tmp_path / "c", _settings(shard_size=1)
            )
    finally:
        torch.set_num_threads(threads)
    assert todos == [[0, 2, 4]] and sorted(p.name for p in (tmp_path / "c").glob("*.json")) == [
        f"shard-0-00000{s}.json" for s in (0, 2, 4)
    ]


@pytest.mark.parametrize("filename", [None, "/disk/shard-0-000001.tar.tmp"])
def test_a_write_error_is_one_data_error_saying_what_is_kept(
    toy: tuple[Path, Path], tmp_path: Path, monkeypatch, filename: str | None
) -> None:
    import errno

    from anydistill.cache.shard_writer import ShardWriter

    images, _ = toy
    real_init = ShardWriter.__init__
    failure = OSError(errno.ENOSPC, "No space left on device", *([filename] if filename else []))

    def init(self, directory, index, rank, header):
        if index == 1:
            raise failure
        real_init(self, directory, index, rank, header)

    monkeypatch.setattr(ShardWriter, "__init__", init)
    out = tmp_path / "c"
    with pytest.raises(DataError) as e:
        run_teacher_pass(StandInTeacher(), images, out, **KW)
    assert e.value.path == out and e.value.__cause__ is failure
    assert e.value.problem == (
        f"cannot write the cache (No space left on device: {filename or out}); the 1 complete shard(s) are kept "
        "and no manifest was written; free space or fix permissions, then rerun the same command to finish"
    )


def test_a_manifest_that_cannot_be_written_is_a_data_error(
    toy: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    import errno

    from anydistill.cache import writer

    images, _ = toy
    real = writer.atomic_write_json

    def write(path, data, fsync=True):
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, fsync)

    monkeypatch.setattr(writer, "atomic_write_json", write)
    with pytest.raises(DataError) as e:
        run_teacher_pass(StandInTeacher(), images, tmp_path / "c", **KW)
    assert e.value.path == tmp_path / "c"
    assert e.value.problem == "cannot write manifest.json (No space left on device); rerun to finish"


class _Crashes(StandInTeacher):
    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("teacher crashed")


def test_a_teacher_that_raises_stops_the_pass_with_its_error(toy: tuple[Path, Path], tmp_path: Path) -> None:
    images, _ = toy
    with pytest.raises(RuntimeError, match="teacher crashed"):
        run_teacher_pass(_Crashes(), images, tmp_path / "c", **KW)
    assert not (tmp_path / "c" / "manifest.json").exists() and not list((tmp_path / "c").glob("shard-*"))


def test_atomic_write_json_fsyncs_moves_into_place_and_reports_the_real_error(
    tmp_path: Path, monkeypatch
) -> None:
    import errno
    import json
    import os

    from anydistill.cache import shards

    synced: list[int] = []
    moves: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (moves.append((str(a), str(b))), real_replace(a, b)))
    path = tmp_path / "index.json"
    shards.atomic_write_json(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]} and len(synced) == 1
    assert moves == [(str(path) + ".tmp", str(path))]
    shards.atomic_write_json(path, {"b": 1}, fsync=False)
    assert len(synced) == 1 and json.loads(path.read_text()) == {"b": 1}
    with pytest.raises(TypeError):
        shards.atomic_write_json(path, {"c": object()})  # not JSON: the old file stays, no .tmp left
    assert json.loads(path.read_text()) == {"b": 1} and sorted(p.name for p in tmp_path.iterdir()) == [
        "index.json"
    ]

    def no_inode(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards, "open", no_inode, raising=False)  # the .tmp is never created
    with pytest.raises(OSError) as e:
        shards.atomic_write_json(path, {"d": 1})
    assert e.value.errno == errno.ENOSPC  # not a FileNotFoundError from removing the .tmp


def test_max_size_accepts_exactly_the_positive_integers(wide: Path, tmp_path: Path) -> None:
    from anydistill.errors import ConfigError

    for bad in (0, -4, 2.5, "8"):
        with pytest.raises(ConfigError) as e:
            run_teacher_pass(StandInTeacher(), wide, tmp_path / "c", max_size=bad)  # type: ignore[arg-type]
        assert str(e.value) == f"max_size must be a positive integer or None, got {bad!r}"
    run_teacher_pass(StandInTeacher(), wide, tmp_path / "one", max_size=1, **KW)
    assert open_cache(tmp_path / "one").read("im0")["disp"].shape == (1, 1)


def test_arrays_are_encoded_without_pickle() -> None:
    with pytest.raises(ValueError, match="pickle"):
        encode_npy(np.array([{"a": 1}], dtype=object))


def test_an_index_loads_as_written_and_an_index_without_header(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    import json

    from anydistill.cache.shard_writer import ShardWriter

    with ShardWriter(tmp_path, 4, 2, {"teacher": "t"}) as w:
        w.add_sample(
            "000000012", {"id": "x", "source": "x.png"}, {"disp": np.ones((2, 3), np.float16)}, {"id": "x"}
        )
    written = w.result
    assert written is not None and ShardIndex.load(tmp_path / "shard-2-000004.json") == written
    assert (written.rank, written.index, written.header["teacher"]) == (2, 4, "t")
    data = json.loads((tmp_path / "shard-2-000004.json").read_text())
    del data["header"]
    (tmp_path / "bare.json").write_text(json.dumps(data))
    assert ShardIndex.load(tmp_path / "bare.json").header == {}


def test_a_minimal_manifest_gets_the_defaults() -> None:
    d = _manifest().to_dict()
    for key in ("unreadable", "timing", "max_size", "dtype"):
        del d[key]
    manifest = Manifest.from_dict(d)
    assert (manifest.unreadable, manifest.timing, manifest.max_size, manifest.dtype) == (
        [],
        {},
        None,
        "float16",
    )
