"""The answer generator on synthetic designed studies whose truth is known.

Each study is written through the project's own record (`record.summarise`, `record.study_attrs`,
`design.distributions`) with chosen per-seed results, so the generator reads exactly what a sweep
would store. It must state the effects that are there, state nothing that is not, keep the `sin`
control out of every comparison, and widen intervals when it pools cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna
import pytest
from optuna.trial import create_trial

from analysis import answer as answers
from analysis.cells import confirmed
from analysis.load import load_study, open_readonly
from analysis.stats import wilson
from analysis.units import over_cells, paired
from kit import ABLATION, DESIGN, write_spec
from sweeps.engine.jobs import Result
from sweeps.study import design as designs
from sweeps.study import spec as specs
from sweeps.study.record import CELL, study_attrs, summarise

FIT, MISS = 1e-5, 0.3


def _results(cell: designs.Cell, n: int, fits: int) -> list[Result]:
    h = cell.settings["hidden"]
    out = []
    for i in range(n):
        mse = FIT if i < fits else MISS
        out.append(Result(test_mse=mse, train_mse=mse, steps=100, diverged_at=None, params=(0.0,) * (3 * h + 1),
                          curve=((0, 0.5, 0.5), (100, mse, mse)), evals=100, seconds=0.01))
    return out


def synthetic(tmp_path, fits: Callable[[designs.Cell], int], *, confirm: int = 16,
              biases: str = '["none", "hidden", "output", "both"]', seeds_of: Callable[[designs.Cell], int] | None = None,
              template: str = DESIGN, name: str = "d") -> object:
    """A designed study in SQLite with `fits(cell)` of each confirmation's seeds fitting."""
    spec = specs.load(str(write_spec(tmp_path / f"{name}.toml", template, confirm=confirm, steps=100, biases=biases)))
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    study = optuna.create_study(study_name=spec.name, storage=url)
    for key, value in study_attrs(spec).items():
        study.set_user_attr(key, value)
    cells = spec.cells()
    dists = designs.distributions(cells)
    for cell in cells:
        for phase, lrs in ((designs.TUNE, cell.lrs if cell.tuned else ()),
                           (designs.CONFIRM, cell.lrs[:1] if cell.lrs else (None,))):
            for lr in lrs:
                n = spec.seeds if phase == designs.TUNE else (seeds_of(cell) if seeds_of else confirm)
                config = cell.config(lr, 0.01)
                res = _results(cell, n, min(fits(cell), n))
                outcome = summarise(config, list(range(n)), res, threshold=spec.success_threshold, run={})
                outcome.attrs[CELL] = {"label": cell.label, "control": cell.control, "ladder": cell.ladder,
                                       "changes": cell.changes, "tuned": cell.tuned}
                params = cell.params(phase, lr)
                study.add_trial(create_trial(params=params, distributions={k: dists[k] for k in params},
                                             value=outcome.value, user_attrs=outcome.attrs))
    storage = open_readonly(url)
    return load_study(storage, url, spec.name)


def by_b1(cell: designs.Cell) -> int:
    """The truth of most tests: b1 fits 15/16, no b1 fits none; sin fits everything (the control)."""
    if cell.settings["activation"] == "sin":
        return 16
    return 15 if cell.settings["bias"] in ("hidden", "both") else 0


def test_an_effect_that_is_there_is_stated_with_its_interval(tmp_path):
    cells = confirmed(synthetic(tmp_path, by_b1))
    b1 = answers.b1_sentence(cells)
    assert b1.text.startswith("**A hidden bias b1 is needed.**")
    diff = b1.numbers["difference"]
    assert diff["low"] > 0.5 and diff["value"] == pytest.approx(15 / 16)
    assert b1.numbers["without_b1"]["value"] == 0 and b1.numbers["cells_without_b1_with_any_fit"] == 0
    assert "cells as units" in b1.text and "tables/cells.csv" in b1.text


def test_an_effect_that_is_absent_is_not_stated(tmp_path):
    cells = confirmed(synthetic(tmp_path, by_b1))
    b2 = answers.b2_sentence(cells)  # b2 present or not: 15/16 either way
    assert "no detectable difference" in b2.text
    assert b2.numbers["difference"]["low"] <= 0 <= b2.numbers["difference"]["high"]
    tanh = answers.tanh_sigmoid_sentence(cells)
    assert tanh is None  # no sigmoid cells in this design: nothing said about it


def test_the_control_never_enters_a_comparison_or_a_headline(tmp_path):
    def sin_everywhere(cell: designs.Cell) -> int:
        return 16 if cell.settings["activation"] == "sin" else 0  # only the control fits

    cells = confirmed(synthetic(tmp_path, sin_everywhere))
    said = answers.answer(cells, None)
    b1 = next(s for s in said if s.id == "b1")
    assert b1.numbers["with_b1"]["value"] == 0  # sin's 100% without and with b1 is not pooled in
    assert "b1 is needed." not in b1.text and "No detectable effect" in b1.text
    smallest = next(s for s in said if s.id == "smallest")
    assert "sin" not in smallest.text and "tanh at no size tried" in smallest.text
    control = next(s for s in said if s.id == "control")
    assert control.text.startswith("*Control*") and "100%" in control.text
    assert all("`sin`" not in s.text and "sin units" not in s.text for s in said if s.id != "control")


def test_a_cell_with_too_few_seeds_cannot_be_called_reliable(tmp_path):
    def everything(cell: designs.Cell) -> int:
        return 2  # every confirmation: all of its seeds fit

    cells = confirmed(synthetic(tmp_path, everything, confirm=2))
    smallest = answers.smallest_sentence(cells)
    assert "at no size tried" in smallest.text  # 2/2 has a Wilson lower bound of 34%, not above 50%
    assert all(v is None for v in smallest.numbers.values())
    many = confirmed(synthetic(tmp_path, lambda c: 16, confirm=16, name="many"))
    assert "tanh 2 " in answers.smallest_sentence(many).text  # the same truth on 16 seeds is reliable


def test_pooling_cells_widens_the_interval_beyond_the_pooled_seeds():
    k = np.array([16] * 10 + [0] * 10)  # half the cells always fit, half never: heterogeneous
    n = np.full(20, 16)
    est = over_cells(k, n)
    low, high = wilson(k.sum(), n.sum())
    assert est.value == pytest.approx(0.5)
    assert est.low < low - 0.05 and est.high > high + 0.05  # the cells' variation, not just the seeds'
    same = over_cells(np.full(20, 8), n)  # cells that agree: no wider than the pooled Wilson interval
    w_low, w_high = wilson(160, 320)
    assert same.low == pytest.approx(float(w_low)) and same.high == pytest.approx(float(w_high))
    zero = over_cells(np.zeros(20), n)  # all at 0%: the seeds' own uncertainty is kept
    assert zero.low == 0 and zero.high > 0
    d = paired([0] * 10, [16] * 10, [16] * 10, [16] * 10)
    assert d.value == 1 and d.excludes_zero()
    assert not paired([8] * 10, [16] * 10, [8] * 10, [16] * 10).excludes_zero()


def test_the_ablation_sentence_names_no_single_fix_when_none_fits(tmp_path):
    def rows(cell: designs.Cell) -> int:
        return {"the question's program": 0, "+ b1": 0, "adam (tuned lr)": 0,
                "path 1: both biases, sigmoid, lm": 4, "nnet's call without b1": 0}[cell.label]

    data = synthetic(tmp_path, rows, confirm=4, template=ABLATION, name="ablation")
    s = answers.ablation_sentence(confirmed(data))
    assert "no single change of the 2 tried makes any seed fit" in s.text
    assert "first fits reliably after 1 change(s)" in s.text
    assert s.numbers["removals_that_break_nnet"] == ["nnet's call without b1"]
    assert "straight" not in s.text or "line c·x" in s.text
    assert math.isfinite(s.numbers["start"]["median_mse"])


def test_without_an_ablation_the_answer_says_so(tmp_path):
    s = answers.ablation_sentence(None)
    assert "has not been run" in s.text and not s.numbers
