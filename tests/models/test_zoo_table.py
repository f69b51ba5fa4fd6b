"""`anydistill models`: the zoo table's counts are the real models' and its latencies the benchmark's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from anydistill.cli import main
from anydistill.models.zoo import build_model, list_models
from anydistill.models.zoo_table import markdown_table, measured_figures, zoo_table

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "bench_zoo" / "bench.json"


@pytest.fixture(scope="module")
def table():
    return {row.name: row for row in zoo_table()}


def test_every_zoo_model_is_listed_at_an_input_it_takes(table):
    assert sorted(table) == sorted(list_models())
    for row in table.values():
        assert row.params_m > 0 and row.gflops > 0 and row.backbone
        expected = {"promptable": (1024,), "detect": (512,)}.get(row.task, (518, 544))
        assert row.input_size in expected


@pytest.mark.parametrize("name", ["depth_tiny", "seg_tiny", "sam_tiny"])
def test_meta_device_counts_are_the_real_models(table, name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    row = table[name]
    assert row.params_m == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    module = model.image_encoder if row.task == "promptable" else model
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.zeros(1, 3, row.input_size, row.input_size))
    assert row.gflops == pytest.approx(counter.get_total_flops() / 1e9)


def test_measured_latency_is_the_committed_benchmarks(table):
    if not BENCH.is_file():
        pytest.skip("benchmarks/results is not in this checkout")
    rows = json.loads(BENCH.read_text())["rows"]
    eager = {r["name"]: r["latency_ms"] for r in rows if r["backend"] == "eager"}
    fastest = {}
    for r in rows:
        if r["latency_ms"] is not None and r["latency_ms"] < fastest.get(r["name"], float("inf")):
            fastest[r["name"]] = r["latency_ms"]
    for name in ("depth_tiny", "seg_tiny", "sam_tiny"):
        assert table[name].latency_ms == eager[name] and table[name].fastest_ms == fastest[name]
    assert table["sam_vit_h"].latency_ms is None  # not measured: shown as –
    assert measured_figures()["threads"] == json.loads(BENCH.read_text())["threads"]


def test_the_cli_prints_the_table_and_json(table, capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(markdown_table(list(table.values())).splitlines()[0])
    assert "| depth_tiny | depth | mobilenetv4_conv_small |" in text and "– |" in text
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in data["models"]} == set(table) and data["measured"]["threads"] >= 1


def test_a_model_a_user_registers_gets_its_task_from_its_type(monkeypatch):
    from anydistill.models.zoo import MODELS, depth_tiny, seg_tiny

    monkeypatch.setattr(MODELS, "_builders", {})  # only the user's models
    MODELS.register("my_depth_net")(depth_tiny)
    MODELS.register("unet_for_cells")(lambda **kw: seg_tiny(num_classes=2, **kw))
    rows = {r.name: r for r in zoo_table()}
    assert (rows["my_depth_net"].task, rows["unet_for_cells"].task) == ("depth", "semantic")


def test_quality_is_the_committed_semantic_benchmark(table):
    """The table's test mIoU is the mean and SD over seeds of bench_semantic_peer.py's committed runs."""
    results = BENCH.parents[1]
    if not (results / "semantic_peer_toyworld.json").is_file():
        pytest.skip("benchmarks/results is not in this checkout")
    runs = json.loads((results / "semantic_peer_toyworld.json").read_text())["runs"]
    values = [r["test"]["miou"] for r in runs if r["row"] == "seg_tiny" and r.get("minutes") is None]
    assert len(values) >= 2
    toyworld = {f["data"]: f for f in table["seg_tiny"].quality}["toyworld"]
    assert toyworld["mean"] == pytest.approx(sum(values) / len(values))
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert toyworld["sd"] == pytest.approx(sd) and toyworld["seeds"] == len(values)
    assert table["sam_vit_h"].quality == ()  # nothing measured: –
    text = markdown_table([table["seg_tiny"], table["sam_vit_h"]])
    assert f"{mean:.3f} ± {sd:.3f} toyworld ({len(values)} seeds)" in text
    assert text.splitlines()[3].endswith("| – |")


def test_the_readme_table_is_the_printed_one(table):
    """The README's zoo table is `anydistill models`' (regenerate it after update_zoo_figures.py)."""
    readme = BENCH.parents[3] / "README.md"
    if not readme.is_file():
        pytest.skip("README.md is not in this checkout")
    printed = [line for line in markdown_table(list(table.values())).splitlines() if line.startswith("|")]
    text = readme.read_text().splitlines()
    assert all(line in text for line in printed)
