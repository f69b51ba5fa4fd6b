"""anydistill bench's parts: round-robin timing, the Pareto front, peak memory, targets, settings."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_students import save_tiny_depth_student

from anydistill.bench.memory import peak_memory_mb
from anydistill.bench.pareto import pareto_front, save_pareto_png
from anydistill.bench.run import BenchSettings, markdown, run_bench
from anydistill.bench.targets import resolve_target
from anydistill.bench.timing import Timing, round_robin
from anydistill.errors import ConfigError


def test_timing_of_known_times():
    t = Timing.of([0.003, 0.001, 0.002, 0.010, 0.004])
    assert (t.median_ms, t.min_ms, t.runs) == (3.0, 1.0, 5)
    assert t.p90_ms == 10.0


def test_round_robin_interleaves_the_calls_and_warms_up():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    timings = round_robin(calls, rounds=3, warmup=2)
    assert order == list("aabbcc") + list("abc") * 3
    assert set(timings) == set("abc") and all(t.runs == 3 for t in timings.values())
    with pytest.raises(ValueError):
        round_robin(calls, rounds=0)


def _dominated(points, i):
    xi, yi = points[i]
    return any((x <= xi and y >= yi) and (x, y) != (xi, yi) for x, y in points)


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20)), min_size=1, max_size=12, unique=True))
def test_pareto_front_is_exactly_the_undominated_points(raw):
    points = [(float(x), float(y)) for x, y in raw]
    front = pareto_front(points)
    assert sorted(front) == sorted(i for i in range(len(points)) if not _dominated(points, i))
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_pareto_png_is_written_only_with_quality(tmp_path):
    rows = [{"name": "a", "latency_ms": 3.0, "quality": 0.7, "metric": "delta1"},
            {"name": "b", "latency_ms": 30.0, "quality": 0.9, "metric": "delta1"},
            {"name": "c", "latency_ms": 5.0, "quality": 0.4, "metric": "miou"}]  # fmt: skip
    path = save_pareto_png(rows, tmp_path / "p.png")
    from PIL import Image

    assert path is not None and Image.open(path).size[0] > 400
    assert save_pareto_png([{**r, "quality": None} for r in rows], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_peak_memory_sees_a_large_allocation():
    size = 200 * 2**20  # 200 MB, touched so it is resident

    def call():
        a = np.ones(size // 8)
        return float(a[::4096].sum())

    measured = peak_memory_mb(call, torch.device("cpu"))
    if measured is None:
        pytest.skip("this kernel does not allow resetting the resident high-water mark")
    assert 150 < measured < 400, measured
    small = peak_memory_mb(lambda: None, torch.device("cpu"))
    assert small is not None and small < 50


def test_targets_from_zoo_names_and_checkpoints(tmp_path):
    zoo = resolve_target("depth_tiny", size=64)
    assert (zoo.task, zoo.side, zoo.checkpoint) == ("depth", 64, None)
    assert zoo.example(2).shape == (2, 3, 64, 64)
    assert torch.equal(zoo.example(1), zoo.example(1))  # seeded
    again = resolve_target("depth_tiny", size=64)
    assert all(torch.equal(a, b) for a, b in zip(zoo.module.state_dict().values(),
                                                  again.module.state_dict().values(), strict=True))  # fmt: skip
    ckpt = save_tiny_depth_student(tmp_path / "student.ckpt", size=64)
    target = resolve_target(str(ckpt))
    assert (target.task, target.side, target.name) == ("depth", 64, "student")
    assert resolve_target(str(ckpt), size=96).side == 96
    with pytest.raises(ConfigError, match="neither a model file nor a zoo model"):
        resolve_target(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ConfigError, match="multiple of"):
        resolve_target(str(ckpt), size=65)


@pytest.mark.parametrize(
    ("settings", "match"),
    [(BenchSettings(backends=("eager", "tensorrt")), "--backends"), (BenchSettings(batch=0), "--batch"),
     (BenchSettings(threads=0), "--threads")],
)  # fmt: skip
def test_bad_settings_are_one_line(settings, match):
    with pytest.raises(ConfigError, match=match):
        settings.check()


def test_run_bench_speed_and_quality_end_to_end(tmp_path):
    ckpt = save_tiny_depth_student(tmp_path / "student.ckpt", size=64)
    settings = BenchSettings(backends=("eager", "channels_last"), batch=2, rounds=2, warmup=1, threads=1,
                             data="toyworld:wide", quality_count=4)  # fmt: skip
    result = run_bench([str(ckpt), "depth_tiny"], tmp_path / "out", settings, progress=False)
    rows = {(r["name"], r["backend"]): r for r in result["rows"]}
    assert set(rows) == set(itertools.product(["student", "depth_tiny"], ["eager", "channels_last"]))
    assert all(r["latency_ms"] > 0 and r["throughput_img_s"] > 0 for r in rows.values())
    models = {m["name"]: m for m in result["models"]}
    assert models["student"]["metric"] == "delta1" and 0.0 <= models["student"]["quality"] <= 1.0
    assert models["depth_tiny"]["quality"] is None  # random weights: no quality figure
    assert models["student"]["gflops"] > 0 and models["student"]["params_m"] == pytest.approx(
        models["depth_tiny"]["params_m"]
    )
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["rows"] == result["rows"] and result["pareto_png"] == "pareto.png"
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    table = markdown(result)
    assert "student" in table and "delta1" in table and "load average" in table
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(("bench-", "."))]  # no leftovers


def test_an_unavailable_backend_is_a_row_with_its_reason(tmp_path, monkeypatch):
    from anydistill.bench import backends

    def broken(*_):
        raise RuntimeError("no C++ compiler found\nmore lines")

    monkeypatch.setitem(backends._MAKERS, "compile", broken)
    result = run_bench(["depth_tiny"], tmp_path, BenchSettings(backends=("eager", "compile"), batch=1, rounds=1,
                                                                warmup=0, size=64), progress=False)  # fmt: skip
    row = next(r for r in result["rows"] if r["backend"] == "compile")
    assert row["latency_ms"] is None and row["unavailable"] == "RuntimeError: no C++ compiler found"
    assert "n/a: RuntimeError" in markdown(result)


def test_the_onnx_backend_runs_the_same_function(tmp_path):
    pytest.importorskip("onnxruntime")
    result = run_bench(["depth_tiny"], tmp_path, BenchSettings(backends=("eager", "onnx"), batch=2, rounds=1,
                                                                warmup=0, size=64, threads=1), progress=False)  # fmt: skip
    row = next(r for r in result["rows"] if r["backend"] == "onnx")
    assert row["unavailable"] is None and row["latency_ms"] > 0 and row["throughput_img_s"] > 0
    assert row["max_abs_err_vs_eager"] < 1e-3 and row["onnx_mb"] > 0.1


def test_checkpoint_labels_name_the_run():
    from pathlib import Path

    from anydistill.bench.targets import _label

    assert _label(Path("runs/teacher/checkpoints/best.ckpt")) == "teacher"
    assert _label(Path("runs/teacher/checkpoints/last.ckpt")) == "teacher (last)"
    assert _label(Path("models/sam_vit_b_01ec64.pth")) == "sam_vit_b_01ec64"
    assert _label(Path("exp/best.ckpt")) == "exp"


def test_a_promptable_model_is_timed_by_its_encoder_and_scored_by_one_click(tmp_path):
    from tiny_students import save_tiny_promptable_student

    from anydistill.bench.quality import measure_quality

    target = resolve_target(str(save_tiny_promptable_student(tmp_path / "sam.ckpt", size=64)))
    assert target.task == "promptable" and target.module is target.loaded.model.image_encoder
    assert target.example(1).shape == (1, 3, 64, 64)
    quality = measure_quality(target, "toyworld:wide", count=2)
    assert quality["metric"] == "miou@1" and 0.0 <= quality["quality"] <= 1.0
    assert quality["quality"] == quality["metrics"]["miou@1"]


def test_a_depth_anything_teacher_folder_is_timed_speed_only(tmp_path):
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, patch_size=14, image_size=56,
                                         out_indices=[1, 2], reshape_hidden_states=False)  # fmt: skip
    config = transformers.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                              neck_hidden_sizes=[8, 16], fusion_hidden_size=16,
                                              head_hidden_size=8)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.DepthAnythingForDepthEstimation(config).eval()
    model.save_pretrained(tmp_path / "da")
    result = run_bench([str(tmp_path / "da"), "depth_tiny"], tmp_path / "out",
                       BenchSettings(backends=("eager",), batch=1, rounds=1, warmup=0, size=224,
                                     data="toyworld:wide", quality_count=2), progress=False)  # fmt: skip
    teacher = next(m for m in result["models"] if m["name"] == "da")
    assert teacher["task"] == "depth" and teacher["quality"] is None and "teacher folder" in teacher["note"]
    row = next(r for r in result["rows"] if r["name"] == "da")
    assert row["input"] == "224x224" and row["latency_ms"] > 0  # a multiple of 14 and of depth_tiny's 32
    with torch.inference_mode():  # the timed module is the network itself
        expected = model(pixel_values=torch.ones(1, 3, 56, 56)).predicted_depth
    target = resolve_target(str(tmp_path / "da"), size=56)
    with torch.inference_mode():
        assert torch.allclose(target.module(torch.ones(1, 3, 56, 56))[:, 0], expected)
    with pytest.raises(ConfigError, match="not a Hugging Face Depth Anything"):
        resolve_target(str(tmp_path))


def test_a_backend_that_fails_on_its_first_call_is_a_row_not_a_crash(tmp_path, monkeypatch):
    from anydistill.bench import backends

    def out_of_memory():
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setitem(backends._MAKERS, "channels_last", lambda *_: backends.Runner(out_of_memory))
    threads = torch.get_num_threads()
    result = run_bench(["depth_tiny"], tmp_path, BenchSettings(backends=("eager", "channels_last"), batch=1,
                                                                rounds=1, warmup=0, size=64, threads=1), progress=False)  # fmt: skip
    assert torch.get_num_threads() == threads  # the caller's thread count is given back
    row = next(r for r in result["rows"] if r["backend"] == "channels_last")
    assert row["latency_ms"] is None and "not enough memory" in row["unavailable"]


def test_size_is_for_dense_models_only():
    assert resolve_target("sam_tiny", size=64).side == 1024  # SAM's encoder keeps its own frame
