"""The bad-input suite (issue 10): every case of the corpus × every command it applies to gives the outcome
class its registry entry says: ``works`` (outputs right), ``one line`` (exit 2, one line naming the file or
key), ``counted skip`` (exit 0, the report names and counts the skipped files) or argparse's ``usage``.
Never a traceback, never a silently wrong output. The table of the same run: benchmarks/RESULTS.md
(``python benchmarks/bad_input_matrix.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bad_inputs.corpus import CASES, COMMANDS, ONE_LINE, OUTCOMES, WORKS, pairs
from bad_inputs.matrix import ACCEPTED, Assets, describe, run_pair

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = pairs()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    return Assets.build(tmp_path_factory.mktemp("assets"))


@pytest.mark.parametrize(("case", "command"), PAIRS, ids=[f"{c}-{m.replace(' ', '_')}" for c, m in PAIRS])
def test_outcome_class(case: str, command: str, assets: Assets, tmp_path: Path) -> None:
    verdict = run_pair(case, command, tmp_path, assets)
    assert verdict.observed in ACCEPTED, describe(verdict)  # no traceback, no silent wrong output
    assert verdict.ok, describe(verdict)


def test_the_registry_covers_every_command_and_class() -> None:
    """Each command meets bad input somewhere, and every bad file is refused somewhere and handled
    elsewhere: the matrix is a matrix, not one column."""
    assert {m for _, m in PAIRS} == set(COMMANDS)
    assert {c.expect[m].outcome for c in CASES for m in c.expect} == set(OUTCOMES)
    for command in COMMANDS:
        outcomes = {c.expect[command].outcome for c in CASES if command in c.expect}
        assert ONE_LINE in outcomes and WORKS in outcomes, command
    assert all(c.description and "\n" not in c.description for c in CASES)


# The classifier can fail: each pair below is run with the library broken the way issue 10 found it, and
# must come out as the failure class, not as its registry class.
@pytest.mark.parametrize(
    ("case", "command", "target", "broken", "observed"),
    [
        # EXIF orientation ignored: a prediction of the stored, not the displayed, image (silently wrong)
        ("exif_rotated", "predict", "anydistill.data.io._exif_transpose", lambda img, path: img, "wrong output"),
        # an output folder made with a bare mkdir: an OSError traceback
        ("unwritable_output", "data toyworld", "anydistill.data.toyworld.writer.make_output_folder",
         lambda folder: Path(folder).mkdir(parents=True, exist_ok=True), "traceback"),
        # a DataLoader worker's error re-raised with torch's wrapper text (its "Original Traceback")
        ("zero_byte_image", "train", "anydistill.errors.original_message", lambda message, cls: message,
         "traceback"),
    ],
)  # fmt: skip
def test_the_classifier_catches_a_broken_library(
    case, command, target, broken, observed, assets, tmp_path, monkeypatch
):
    monkeypatch.setattr(target, broken)
    verdict = run_pair(case, command, tmp_path, assets)
    assert verdict.observed == observed, describe(verdict)
