"""The export folder: bad input refused in one line, nothing half-written, refusal when a graph disagrees."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import anydistill.export  # noqa: E402
from anydistill.cli import main  # noqa: E402
from anydistill.errors import ConfigError, DataError  # noqa: E402
from anydistill.export import EXPORT_JSON, ExportCheckError, export_model  # noqa: E402
from anydistill.export import check as check_module  # noqa: E402
from anydistill.export import exporter as exporter_module  # noqa: E402
from anydistill.export.deps import require_onnx  # noqa: E402
from anydistill.export.files import STAGING_PREFIX  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _classify_ckpt(path):
    from anydistill.data.classes import ClassInfo
    from anydistill.loading import model_record
    from anydistill.models.classifier import build_classifier

    model = build_classifier("test_efficientnet", 3)
    arch = {"model_name": "test_efficientnet", "model_kwargs": {}, "num_classes": 3}
    record = model_record("classify", model.preprocess_spec(16), arch, ClassInfo(["a", "b", "c"]))
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "anydistill_model": record},
        path,
    )
    return path


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"opset": 13}, ConfigError, r"--opset: must be 14\.\.20, got 13"),
        ({"opset": 21}, ConfigError, r"--opset: must be 14\.\.20"),
        ({"format": "tflite"}, ConfigError, r"--format: must be one of \['onnx'\]"),
        ({"precision": "int4"}, ConfigError, "precision: must be one of"),
        ({"size": 50}, ConfigError, "image_size: must be a multiple of 32, got 50"),
        ({"decoder_masks": "two"}, ConfigError, "--decoder-masks: must be one of"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, depth_ckpt, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        export_model(depth_ckpt, tmp_path / "out", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_checkpoints_and_folders_are_refused(tmp_path, depth_ckpt):
    with pytest.raises(DataError, match="nope.ckpt: no such checkpoint file"):
        export_model(tmp_path / "nope.ckpt", tmp_path / "out")
    with pytest.raises(DataError, match="is a folder; give a checkpoint file"):
        export_model(tmp_path, tmp_path / "out")
    with pytest.raises(
        DataError, match="is a 'classify' model; export supports depth, semantic, promptable and detect"
    ):
        export_model(_classify_ckpt(tmp_path / "c.ckpt"), tmp_path / "out")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not an anydistill export"):
        export_model(depth_ckpt, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="output folder is an existing file"):
        export_model(depth_ckpt, tmp_path / "file")


def test_promptable_options_that_do_not_apply_are_refused(tmp_path, upstream_sam_pth):
    with pytest.raises(ConfigError, match="--dynamic: a promptable model's image encoder is static"):
        export_model(upstream_sam_pth, tmp_path / "out", dynamic=True)
    with pytest.raises(ConfigError, match="--size 64: a promptable model exports at its own input size, 128"):
        export_model(upstream_sam_pth, tmp_path / "out", size=64)


def test_a_disagreeing_graph_is_refused_and_nothing_is_kept(tmp_path, depth_ckpt, monkeypatch):
    out = tmp_path / "out"
    export_model(depth_ckpt, out)  # an earlier, good export stays as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = check_module.run_onnx

    def perturbed(session, feeds):
        return [o + 0.05 * np.abs(o).max() for o in real(session, feeds)]

    monkeypatch.setattr(check_module, "run_onnx", perturbed)
    with pytest.raises(ExportCheckError) as info:
        export_model(depth_ckpt, out, size=96)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model (fp32): onnxruntime disagrees with PyTorch")
    assert "of the output scale (limit 0.001)" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder left either
    new = tmp_path / "new"
    with pytest.raises(ExportCheckError):
        export_model(depth_ckpt, new)
    assert list(new.iterdir()) == []


def test_an_interrupted_export_leaves_no_graph_and_its_leftovers_are_cleared(
    tmp_path, depth_ckpt, monkeypatch
):
    out = tmp_path / "out"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(exporter_module, "check_dense", killed)
        with pytest.raises(KeyboardInterrupt):
            export_model(depth_ckpt, out)
    assert list(out.iterdir()) == []
    # A SIGKILL leaves its staging folder (with a half-written graph): the folder is still ours.
    dead = out / f"{STAGING_PREFIX}dead"
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"\x08\x07half")
    export_model(depth_ckpt, out)
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_JSON, "model.onnx"]


def test_a_large_graph_keeps_its_weights_in_external_data(tmp_path, depth_ckpt):
    out = tmp_path / "out"
    result = export_model(depth_ckpt, out, external_data_threshold=100_000)  # the 2 GB branch, scaled down
    assert sorted(result.files) == ["model.onnx", "model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < 200_000 < (out / "model.onnx.data").stat().st_size
    assert result.manifest["graphs"] == {"model": "model.onnx"}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.zeros((1, 3, 64, 64), np.float32)})[0].shape == (1, 1, 64, 64)
    assert result.manifest["check"]["model"]["rel_error"] < 1e-3
    export_model(depth_ckpt, out)  # re-exported in one file: the old external data goes
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_JSON, "model.onnx"]


def test_another_task_replaces_an_export_and_its_graphs(tmp_path, depth_ckpt, upstream_sam_pth):
    out = tmp_path / "out"
    export_model(depth_ckpt, out)
    export_model(upstream_sam_pth, out)
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_JSON, "image_encoder.onnx", "prompt_decoder.onnx"]
    assert json.loads((out / EXPORT_JSON).read_text())["task"] == "promptable"


def test_the_cli_exports_and_says_what_is_wrong_in_one_line(tmp_path, depth_ckpt, capsys):
    assert main(["export", "--checkpoint", str(depth_ckpt), "--out", str(tmp_path / "o"), "--fp16"]) == 0
    printed = capsys.readouterr().out
    assert "exported a depth model (fp16, opset 17, static, input 64x64)" in printed
    assert "model.onnx" in printed and "check model vs PyTorch: max abs error" in printed
    assert json.loads((tmp_path / "o" / EXPORT_JSON).read_text())["precision"] == "fp16"
    assert (
        main(["export", "--checkpoint", str(depth_ckpt), "--out", str(tmp_path / "p"), "--opset", "12"]) == 2
    )
    assert capsys.readouterr().err == "anydistill: error: --opset: must be 14..20, got 12\n"


def test_missing_onnx_is_one_line_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ConfigError, match=r"onnxruntime is missing\): pip install 'anydistill\[export\]'"):
        require_onnx()


def test_without_onnx_an_export_says_what_to_install_before_any_work(tmp_path, depth_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(
        ConfigError, match=r"^ONNX export needs onnx and onnxruntime \(onnx is missing\): pip install"
    ):
        export_model(depth_ckpt, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_the_package_does_not_import_onnx_at_import_time():
    """``onnx`` / ``onnxruntime`` are imported inside functions only (the library imports without them)."""
    for path in Path(anydistill.export.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module-level statements
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                assert not any(n.split(".")[0] in ("onnx", "onnxruntime") for n in names), (path.name, names)
