"""The method registry: a method registered from this file trains through ``anydistill train``; defaults
per CLI verb; unknown names refused; a time-budgeted run's learning rate decays."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from anydistill.checkpoints import read_checkpoint
from anydistill.cli import main
from anydistill.config import TrainConfig, load_config, register_config_section
from anydistill.errors import ConfigError
from anydistill.methods import MethodRun, default_method, get_method, register_method


@dataclass
class TinyConfig:
    """The test method's own typed section (``tiny.*``)."""

    scale: float = 1.0
    width: int = 4


class TinyModule(L.LightningModule):
    def __init__(self, cfg: TinyConfig, lr: float) -> None:
        super().__init__()
        self.cfg, self.lr = cfg, lr
        self.net = nn.Linear(3, cfg.width)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = (self.net(x) * self.cfg.scale).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val/loss", (self.net(x) * self.cfg.scale).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TinyData(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 3)), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4)


register_config_section("tiny", TinyConfig)
BUILT: list[TrainConfig] = []


@register_method("tiny_test_method", tasks=None)
def build_tiny(cfg: TrainConfig) -> MethodRun:
    """A two-parameter-tensor method defined in a test file."""
    BUILT.append(cfg)
    return MethodRun(TinyModule(cfg.tiny, cfg.optim.lr), TinyData(), monitor="val/loss", mode="min")


def test_a_method_registered_here_trains_two_steps_through_the_cli(tmp_path: Path, capsys):
    run = tmp_path / "run"
    code = main(["train", "method=tiny_test_method", "tiny.scale=2.5", "tiny.width=5", f"run_dir={run}",
                 "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.accelerator=cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert BUILT[-1].tiny == TinyConfig(scale=2.5, width=5)  # typed, not a dict
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["method"] == "tiny_test_method" and summary["global_step"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["tiny"] == {"scale": 2.5, "width": 5}
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")  # weights-only readable
    assert ckpt["state_dict"]["net.weight"].shape == (5, 3)
    assert ckpt["anydistill_config"]["method"] == "tiny_test_method"


class _Interrupting(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the training loop


@register_method("interrupted_test_method", tasks=None)
def build_interrupted(cfg: TrainConfig) -> MethodRun:
    """The tiny method, interrupted by Ctrl-C at its second step."""
    return MethodRun(
        TinyModule(cfg.tiny, cfg.optim.lr), TinyData(), "val/loss", "min", callbacks=[_Interrupting()]
    )


def test_ctrl_c_says_rerun_to_resume_with_exit_130(tmp_path: Path, capsys):
    """Lightning answers Ctrl-C with sys.exit(1); the CLI's own line and code come instead."""
    code = main(["train", "method=interrupted_test_method", f"run_dir={tmp_path}", "trainer.max_steps=5",
                 "trainer.progress_bar=false", "trainer.accelerator=cpu"])  # fmt: skip
    assert code == 130
    assert "interrupted (a rerun of the same command resumes)" in capsys.readouterr().err


def test_unknown_section_keys_are_refused_for_registered_sections_too():
    with pytest.raises(ConfigError, match="tiny.nope"):
        load_config(None, ["tiny.nope=1"])


def test_sections_and_methods_refuse_duplicates():
    with pytest.raises(ValueError, match="already"):
        register_config_section("tiny", TinyConfig)
    with pytest.raises(ValueError, match="already"):
        register_method("tiny_test_method")(build_tiny)
    with pytest.raises(ValueError, match="already"):
        register_config_section("optim", TinyConfig)


@pytest.mark.parametrize(
    ("verb", "task", "method"),
    [("train", "depth", "supervised"), ("train", "semantic", "supervised"), ("train", "promptable", "promptable"),
     ("distill", "depth", "distill"), ("distill", "promptable", "sam_distill"), ("train", "classify", "classify"),
     ("distill", "classify", "kd")],
)  # fmt: skip
def test_each_verb_and_task_has_its_default_method(verb, task, method):
    assert default_method(verb, task) == method


def test_methods_command_lists_the_registered_methods(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(["distill", "promptable", "sam_distill", "supervised",
                                                          "simclr", "moco", "dino", "mae", "classify", "kd", "detect", "detect_distill",
                                                          "tiny_test_method",
                                                          "interrupted_test_method"])  # fmt: skip
    assert any(line.startswith("tiny_test_method") and "defined in a test file" in line for line in lines)


def test_unknown_method_and_wrong_task_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "method=nope", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "supervised" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="method 'supervised' trains task depth or semantic"):
        get_method("supervised")(load_config(None, ["task=promptable"]))


class _FakeClock:
    """Stands in for the ``time`` module of Lightning's Timer and of ScheduleLength: ``monotonic()`` advances
    20 ms a call, so a time-budgeted run's length depends on the code, not on how busy the machine is."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def monotonic(self) -> float:
        self.calls += 1
        self.now += 0.02
        return self.now


@pytest.mark.parametrize(
    "limits",
    [["trainer.max_epochs=1000"], ["trainer.max_epochs=-1", "trainer.max_steps=-1"]],
    ids=["epoch-cap", "time-only"],
)
def test_time_budgeted_run_decays_its_learning_rate(tmp_path: Path, monkeypatch, limits):
    """With ``trainer.max_time_minutes`` the cosine schedule's length is estimated from the step time, so the
    learning rate ends near ``min_lr_ratio · lr`` (before, the schedule's length came from max_epochs and the
    rate stayed at its peak). With the time as the only limit Lightning's step estimate is ``inf``; the run
    starts with an unknown length instead of failing (it raised OverflowError before)."""
    import lightning.pytorch.callbacks.timer as timer_module

    import anydistill.optim_callbacks as optim_callbacks
    from anydistill.training import train

    clock = _FakeClock()
    monkeypatch.setattr(timer_module, "time", clock)
    monkeypatch.setattr(optim_callbacks, "time", clock)

    cfg = load_config(None, [f"run_dir={tmp_path}", "data.image_size=32", "data.train_count=4000", "data.val_count=2",
                             "data.batch_size=2", "data.num_workers=0", "trainer.max_time_minutes=0.1",
                             *limits, "trainer.progress_bar=false", "trainer.accelerator=cpu",
                             "optim.warmup_steps=5", "optim.lr=0.001", "optim.min_lr_ratio=0.01"])  # fmt: skip
    result = train(cfg)
    ckpt = read_checkpoint(result.last_checkpoint)
    steps = ckpt["global_step"]
    last_lr = ckpt["lr_schedulers"][0]["_last_lr"][0]
    assert clock.calls > 0 and steps > 20, (clock.calls, steps)  # enough steps for the estimate to settle
    assert last_lr < 0.15 * cfg.optim.lr, (steps, last_lr)
    schedule = ckpt["lr_schedulers"][0]["lr_lambdas"][0]  # the WarmupCosine's state, saved by LambdaLR
    assert schedule["cap_warmup"] is False and schedule["total_steps"] <= steps + 5
