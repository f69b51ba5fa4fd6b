"""The depth demo's parts that need no training: the answer sentence and its figures, the time-left
estimate of each step's line, the budgets, and refused arguments."""

from __future__ import annotations

import pytest

from anydistill.cli import main
from anydistill.demos import common
from anydistill.demos.common import Steps
from anydistill.demos.depth import DEFAULT, QUICK, answer, answer_sentence, run_demo
from anydistill.errors import ConfigError


def _model(delta1: list[float], abs_rel: list[float], latency: float) -> dict:
    per_seed = [{"delta1": d, "abs_rel": a} for d, a in zip(delta1, abs_rel, strict=True)]
    mean = {k: sum(m[k] for m in per_seed) / len(per_seed) for k in ("delta1", "abs_rel")}
    return {"metrics": mean, "per_seed": per_seed, "latency_ms_518": latency, "params_m": 1.0}


def _results(seeds: int) -> dict:
    lab = ([0.70, 0.72], [0.20, 0.22]) if seeds == 2 else ([0.70], [0.20])
    dis = ([0.80, 0.81], [0.15, 0.16]) if seeds == 2 else ([0.80], [0.15])
    return {
        "teacher (depth_small)": _model([0.85], [0.12], 300.0),
        "student, labeled only": _model(*lab, 100.0),
        "student, distilled": _model(*dis, 75.0),
    }


def test_answer_figures_are_computed_from_the_results() -> None:
    a = answer(_results(seeds=2))
    assert a["speedup"] == pytest.approx(4.0)
    assert a["distilled_share"] == pytest.approx(0.805 / 0.85)
    assert a["labeled_share"] == pytest.approx(0.71 / 0.85)
    assert a["gain_delta1"] == pytest.approx(0.805 - 0.71)
    assert a["gain_abs_rel"] == pytest.approx(0.21 - 0.155)
    # the larger sample standard deviation of the two students: 0.02 / sqrt(2) for the labeled one
    assert a["spread_delta1"] == pytest.approx(0.02 / 2**0.5)
    assert a["spread_abs_rel"] == pytest.approx(0.02 / 2**0.5)


def test_answer_sentence_leads_with_speed_and_shares_and_compares_the_gain_with_the_spread() -> None:
    text = answer_sentence(answer(_results(seeds=2)), seeds=2)
    first = text.splitlines()[0]
    assert first.startswith("**The distilled student is 4.0× faster than its teacher and keeps 95% of its δ1")
    assert "alone, it keeps 84%" in first
    assert "δ1 by +0.095 and AbsRel by -0.055" in text
    assert f"{0.095 / (0.02 / 2**0.5):.1f}× and {0.055 / (0.02 / 2**0.5):.1f}× the spread" in text
    one = answer_sentence(answer(_results(seeds=1)), seeds=1)
    assert "one seed" in one and "--seeds 2" in one and "spread" in one
    assert answer(_results(seeds=1))["spread_delta1"] is None


def test_time_left_scales_the_plan_by_the_speed_so_far(monkeypatch, capsys) -> None:
    now = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: now[0])
    steps = Steps(3, plan={"a": 10.0, "b": 20.0, "c": 30.0})
    assert steps.time_left() == pytest.approx(60.0)  # nothing done yet: the plan itself
    with steps.step("a", "first"):
        now[0] += 20.0  # step a took 20 s against a plan of 10: this machine is 2× slower
    assert steps.time_left() == pytest.approx((20.0 + 30.0) * 2.0)
    with steps.step("b", "second"):
        now[0] += 10.0  # b: 10 s against 20, so (20 + 10) / (10 + 20) = 1× overall
    assert steps.time_left() == pytest.approx(30.0)
    assert steps.seconds == {"a": 20.0, "b": 10.0}
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[1/3] first (about 1 min left)", "[2/3] second (about 2 min left)"]
    assert Steps(2).time_left() is None


def test_budgets_give_both_students_the_same_steps_and_the_teacher_more() -> None:
    for budget in (DEFAULT, QUICK):
        assert budget.teacher_steps > budget.student_steps
        plan = budget.plan()
        assert set(plan) == {"data", "teacher", "teacher_pass", "student_labeled", "student_distilled",
                             "evaluate"}  # fmt: skip
    assert sum(DEFAULT.plan().values()) <= 8 * 60  # the default demo's planned time on the reference machine
    two = DEFAULT.plan(), type(DEFAULT)(seeds=2).plan()
    assert two[1]["student_distilled"] == pytest.approx(2 * two[0]["student_distilled"])


def test_seeds_below_one_are_refused_before_anything_is_written(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        run_demo(tmp_path / "out", seeds=0)
    assert not (tmp_path / "out").exists()


def test_seeds_apply_only_to_the_depth_story(capsys) -> None:
    assert main(["demo", "--promptable", "--seeds", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds applies to the depth story" in err[0]
