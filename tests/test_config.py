from pathlib import Path

import pytest

from anydistill.config import TrainConfig, config_from_dict, load_config, save_config
from anydistill.errors import ConfigError


def test_defaults_load():
    cfg = load_config()
    assert isinstance(cfg, TrainConfig)
    assert cfg.task == "depth" and cfg.data.source == "toyworld"


def test_file_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("task: semantic\ndata:\n  image_size: 64\n  batch_size: 4\n")
    cfg = load_config(path, ["data.batch_size=8", "trainer.max_epochs=3"])
    assert cfg.task == "semantic"
    assert cfg.data.image_size == 64  # from the file
    assert cfg.data.batch_size == 8  # the command line wins over the file
    assert cfg.trainer.max_epochs == 3


def test_unknown_key_names_file_and_key(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  imgae_size: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.yaml" in str(err.value) and "imgae_size" in str(err.value)


def test_wrong_type_names_key(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "batch_size" in str(err.value) and "bad.yaml" in str(err.value)


def test_wrong_type_on_command_line():
    with pytest.raises(ConfigError, match="max_epochs"):
        load_config(None, ["trainer.max_epochs=ten"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["trainer.max_epochs"])


def test_invalid_values(tmp_path: Path):
    with pytest.raises(ConfigError, match="task"):
        load_config(None, ["task=flow"])
    with pytest.raises(ConfigError, match="train_root"):
        load_config(None, ["data.source=folder"])
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(None, ["data.crop_scale=[0.9,0.1]"])


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_roundtrip_through_yaml_and_dict(tmp_path: Path):
    cfg = load_config(None, ["data.image_size=96", "model.kwargs={backbone: resnet18}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
    assert again.model.kwargs == {"backbone": "resnet18"}


def test_prompt_section_reaches_the_promptable_module(monkeypatch):
    """Every prompt.* training knob arrives in PromptableModule (a dropped key would silently train with
    the default): the method builder hands the typed section over, and the module reads it."""
    from anydistill.methods import get_method

    cfg = load_config(None, ["task=promptable", "prompt.focal_weight=7", "prompt.dice_weight=3", "prompt.iou_weight=0.5",
                             "prompt.num_rounds=5", "prompt.refine_rounds=1", "prompt.p_box=0.25",
                             "prompt.loss_resolution=low_res", "prompt.val_max_clicks=4", "prompt.val_instances=3",
                             "prompt.iou_supervision=all", "prompt.box_noise_std=0.2", "prompt.box_noise_max=7",
                             "prompt.multimask_first_round=false", "prompt.multimask_box=true",
                             "prompt.detach_mask_prompt=true", "optim.lr=0.0003", "data.image_size=64",
                             "data.train_count=2", "data.val_count=1", "model.name=sam_tiny"])  # fmt: skip
    module = get_method("promptable")(cfg).module
    loss = module.loss_fn
    assert (loss.focal_weight, loss.dice_weight, loss.iou_weight, loss.iou_supervision) == (
        7.0,
        3.0,
        0.5,
        "all",
    )
    assert (module.box_noise_std, module.box_noise_max) == (0.2, 7.0)
    assert (module.multimask_first_round, module.multimask_box, module.detach_mask_prompt) == (
        False,
        True,
        True,
    )
    assert (module.num_rounds, module.refine_rounds, module.p_box) == (5, 1, 0.25)
    assert (module.loss_resolution, module.val_max_clicks, module.val_instances) == ("low_res", 4, 3)
    assert module.optim_cfg.lr == 0.0003
    assert module.hparams["prompt"]["focal_weight"] == 7.0  # plain data in the checkpoint


def test_gradient_clip_val_reaches_the_lightning_trainer(monkeypatch, tmp_path: Path):
    import lightning as L

    from anydistill.training import train

    class Built(Exception):
        pass

    seen = {}

    def trainer(**kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(L, "Trainer", trainer)
    cfg = load_config(None, [f"run_dir={tmp_path}", "data.train_count=4", "data.val_count=2", "data.image_size=32",
                             "trainer.gradient_clip_val=0.1"])  # fmt: skip
    with pytest.raises(Built):
        train(cfg)
    assert seen["gradient_clip_val"] == 0.1
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        load_config(None, ["trainer.gradient_clip_val=0"])


@pytest.mark.parametrize(
    ("unused", "overrides", "cuda", "expected"),
    [
        (True, [], 0, "auto"),  # CPU, one process
        (True, [], 1, "auto"),  # one GPU
        (True, [], 4, "ddp_find_unused_parameters_true"),  # Lightning would pick DDP
        (True, ["trainer.devices=1"], 4, "auto"),
        (True, ["trainer.devices=0,1"], 4, "ddp_find_unused_parameters_true"),
        (True, ["trainer.num_nodes=2", "trainer.devices=1"], 1, "ddp_find_unused_parameters_true"),
        (True, ["trainer.strategy=ddp"], 0, "ddp_find_unused_parameters_true"),
        (True, ["trainer.strategy=ddp_spawn"], 0, "ddp_spawn_find_unused_parameters_true"),
        (True, ["trainer.strategy=fsdp"], 4, "fsdp"),
        (False, [], 4, "auto"),
        (False, ["trainer.strategy=ddp"], 4, "ddp"),
    ],
)
def test_ddp_finds_unused_parameters_when_the_method_asks(unused, overrides, cuda, expected):
    from anydistill.training import trainer_strategy

    cfg = load_config(None, overrides)
    assert trainer_strategy(cfg, unused, cuda_devices=cuda) == expected


def test_promptable_methods_ask_ddp_for_unused_parameters_dense_ones_do_not(tmp_path: Path):
    from anydistill.methods import get_method

    common = ["data.image_size=64", "data.train_count=2", "data.val_count=1", f"run_dir={tmp_path}"]
    promptable = get_method("promptable")(
        load_config(None, ["task=promptable", "model.name=sam_tiny", *common])
    )
    supervised = get_method("supervised")(load_config(None, common))
    assert promptable.find_unused_parameters and not supervised.find_unused_parameters
    assert (promptable.monitor, supervised.monitor) == ("val/miou@1", "val/delta1")


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_names_a_method(path: Path):
    """The YAML files in configs/ keep working unchanged: they load, and the CLI verb they are documented
    with picks a method that accepts their task (distill_* configs with ``anydistill distill``)."""
    from anydistill.methods import get_method
    from anydistill.training import resolve_method

    cfg = load_config(path)
    verb = next((v for v in ("distill", "pretrain") if path.stem.startswith(v)), "train")
    resolved = resolve_method(cfg, verb)
    method = get_method(resolved.method)
    assert method.tasks is None or cfg.task in method.tasks
    # the files name no method (the verb's default), except pre-training ones, which name theirs
    assert (cfg.method is None) != (verb == "pretrain")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.precision=bogus", "trainer.precision"),
        ("trainer.checkpoint_every_n_steps=-1", "trainer.checkpoint_every_n_steps"),
        ("data.num_workers=-2", "data.num_workers"),
        ("data.train_count=0", "data.train_count"),
        ("data.on_bad_class=maybe", "data.on_bad_class"),
        ("trainer.max_steps=0", "trainer.max_steps"),  # the key given, not its sibling
        ("trainer.max_time_minutes=0", "trainer.max_time_minutes"),
    ],
)
def test_bad_values_are_refused_at_load_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_an_unknown_model_name_is_one_line_through_the_cli(tmp_path, capsys):
    from anydistill.cli import main

    assert main(["train", "model.name=depth_huge", f"run_dir={tmp_path}", "data.num_workers=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'depth_huge'; known:" in err[0] and "depth_tiny" in err[0]


def test_on_bad_class_reaches_the_folder_dataset(tmp_path):
    from anydistill.data.datamodule import folder_dataset
    from anydistill.data.toyworld import write_toyworld

    root = write_toyworld(tmp_path / "d", count=2, size=32, domain="wide", seed=0, progress=False)
    cfg = load_config(None, ["data.on_bad_class=ignore"])
    assert folder_dataset(cfg.data, root, "semantic", None).on_bad_class == "ignore"


def test_a_missing_data_folder_is_named_as_missing(tmp_path, capsys):
    from anydistill.cli import main

    assert (
        main(["train", "data.source=folder", f"data.train_root={tmp_path / 'nope'}", f"run_dir={tmp_path}"])
        == 2
    )
    assert (
        capsys.readouterr().err.strip()
        == f"anydistill: error: {tmp_path / 'nope'}: data.train_root: no such folder"
    )
