"""Checkpoints are read with torch.load(weights_only=True): plain data loads, pickled code is refused."""

import collections

import pytest
import torch

from anydistill.checkpoints import read_checkpoint
from anydistill.errors import DataError
from anydistill.inference import load_student
from anydistill.promptable.loading import load_promptable


class _Payload:
    """Unpickling this would run code (``__reduce__``); weights_only refuses it."""

    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_plain_checkpoints_load(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save(
        {"state_dict": collections.OrderedDict(w=torch.ones(2)), "hyper_parameters": {"lr": 0.1}}, path
    )
    ckpt = read_checkpoint(path)
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2)) and ckpt["hyper_parameters"] == {"lr": 0.1}


@pytest.mark.parametrize("loader", [read_checkpoint, load_student, load_promptable])
def test_pickled_code_is_refused_with_one_clear_line(tmp_path, capsys, loader):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload()}}, path)
    with pytest.raises(DataError, match="beyond tensors and plain data") as err:
        loader(path)
    assert "evil.ckpt" in str(err.value) and "\n" not in str(err.value)
    assert "plain data (print)" in str(err.value)  # names what was refused
    assert "code ran" not in capsys.readouterr().out


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.ckpt"
    torch.save([torch.ones(1)], path)
    with pytest.raises(DataError, match="expected a dict, found list"):
        read_checkpoint(path)
