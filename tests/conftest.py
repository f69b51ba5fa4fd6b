from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (the team's small real image sets); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only the team's checkouts have ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and stay fast when other processes load the shared
    cores; the previous thread count is restored after the module. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_depth_student(path: Path, size: int = 64) -> Path:
    """A tiny untrained ``depth_tiny`` saved the way training saves a student (``model.*`` weights and the
    model record ``anydistill.loading.load_model`` reads), at pre-processing size ``size``: no training."""
    import torch

    from anydistill.loading import model_record
    from anydistill.models import build_model

    torch.manual_seed(0)
    model = build_model("depth_tiny")
    arch = {"model_name": "depth_tiny", "model_kwargs": {}, "num_classes": None}
    record = model_record("depth", model.preprocess_spec(size), arch)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path


@pytest.fixture(scope="module")
def depth_ckpt(tmp_path_factory) -> Path:
    """:func:`save_tiny_depth_student` in a module-wide temporary folder."""
    return save_tiny_depth_student(tmp_path_factory.mktemp("ckpt") / "student.ckpt")
