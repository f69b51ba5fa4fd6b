"""Errors a user can fix stay one line, also when raised inside a DataLoader worker process."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anydistill.errors import ConfigError, DataError, original_message


class _Failing(Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 2:
            raise self.error
        return torch.zeros(1)


@pytest.mark.parametrize(
    ("error", "cls", "text"),
    [
        (DataError("/data/a: b.png", "truncated image"), DataError, "/data/a: b.png: truncated image"),
        (DataError(None, "no images found"), DataError, "no images found"),
        (ConfigError("data.image_size: must be positive"), ConfigError, "data.image_size: must be positive"),
    ],
)
def test_an_error_in_a_worker_reaches_the_main_process_as_itself_in_one_line(error, cls, text):
    loader = DataLoader(_Failing(error), batch_size=1, num_workers=1)
    with pytest.raises(cls) as caught:
        list(loader)
    assert type(caught.value) is cls  # not torch's RuntimeError wrapper
    assert str(caught.value) == text and "\n" not in str(caught.value)
    del loader


def test_messages_outside_workers_are_left_alone():
    assert str(DataError("x.png", "bad")) == "x.png: bad" and DataError("x.png", "bad").problem == "bad"
    assert str(DataError("just a message")) == "just a message" and DataError("just a message").path is None
    text = "Caught DataError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n  ...\n"
    assert original_message(text + "anydistill.errors.DataError: p.png: bad", DataError) == "p.png: bad"
    assert original_message(text + "ValueError: other", DataError) == "ValueError: other"
    assert original_message("Caught you", DataError) == "Caught you"
