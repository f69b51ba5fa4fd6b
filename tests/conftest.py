import os
from pathlib import Path

# As the anydistill command does (src/anydistill/cli.py): OpenMP threads sleep while they wait, so the suite
# slows in proportion when other work shares the cores. Set before torch loads (tiny_students imports it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from tiny_students import save_tiny_depth_student  # noqa: E402

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


@pytest.fixture(scope="module")
def depth_ckpt(tmp_path_factory) -> Path:
    """:func:`save_tiny_depth_student` in a module-wide temporary folder."""
    return save_tiny_depth_student(tmp_path_factory.mktemp("ckpt") / "student.ckpt")
