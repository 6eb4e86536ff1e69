"""A designed study end to end: cells tuned, then confirmed on fresh seeds; the ablation; the report
and its three machine-readable files."""

from __future__ import annotations

import json
from collections import Counter

import optuna
import pandas as pd
import pytest

from analysis.cli import main as report_main
from kit import ABLATION, DESIGN, write_spec
from sweeps.study import design as designs
from sweeps.study import spec as specs
from sweeps.study.record import read
from sweeps.study.runner import Options, run

BIASES = '["none", "both"]'


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("design")
    url = f"sqlite:///{tmp / 'studies.db'}"
    spec = specs.load(str(write_spec(tmp / "d.toml", DESIGN, confirm=6, steps=300, biases=BIASES)))
    summary = run(spec, Options(storage=url, progress=False), echo=lambda *a: None)
    abl = specs.load(str(write_spec(tmp / "ablation.toml", ABLATION, steps=300)))
    run(abl, Options(storage=url, progress=False), echo=lambda *a: None)
    trials = optuna.load_study(study_name="d", storage=url).get_trials()
    return {"tmp": tmp, "url": url, "spec": spec, "summary": summary, "trials": trials, "ablation": abl}


def test_every_cell_is_tuned_then_confirmed_once(swept):
    spec, trials = swept["spec"], swept["trials"]
    cells = spec.cells()
    assert swept["summary"].finished == designs.trials_planned(cells) == len(trials)
    phases = Counter((t.params["phase"], t.state.name) for t in trials)
    tuned = [c for c in cells if c.tuned]
    assert phases[("tune", "COMPLETE")] + phases[("tune", "FAIL")] == sum(len(c.lrs) for c in tuned)
    assert phases[("confirm", "COMPLETE")] + phases[("confirm", "FAIL")] == len(cells)
    confirms = [t for t in trials if t.params["phase"] == "confirm"]
    assert len({json.dumps({k: v for k, v in t.params.items() if k != "lr"}, sort_keys=True) for t in confirms}) \
        == len(cells)
    for t in confirms:
        rec = read(t)
        assert len(rec.seeds.seed) == 6  # confirm_seeds
        if rec.params["optimizer"] == "lm":
            assert "lr" not in t.params and not rec.tuned_from  # nothing to tune, nothing shown
        else:
            tried = [designs.Tried(lr=a, successes=b, value=c if c is not None else float("inf"), number=d)
                     for a, b, c, d in rec.tuned_from]
            assert len(tried) == 2 and t.params["lr"] == designs.choose(tried).lr
            tune = {tt.number: tt for tt in trials}
            for lr, fits, _, number in rec.tuned_from:  # what it chose from is what the tuning trials stored
                assert tune[number].params["lr"] == lr and tune[number].params["phase"] == "tune"
                assert sum(m is not None and m < 1e-3 for m in read(tune[number]).seeds.test_mse) == fits


def test_confirmation_never_reuses_a_tuning_seed(swept):
    trials = swept["trials"]
    seeds = {phase: [s for t in trials if t.params["phase"] == phase for s in read(t).seeds.seed]
             for phase in ("tune", "confirm")}
    assert seeds["tune"] and seeds["confirm"]
    assert not set(seeds["tune"]) & set(seeds["confirm"])
    assert len(set(seeds["confirm"])) == len(seeds["confirm"])  # fresh within confirmation too
    assert all(s >= 1 << 62 for s in seeds["confirm"]) and all(s < 1 << 62 for s in seeds["tune"])


def test_a_cells_seeds_do_not_depend_on_trial_numbers(swept):
    cell = swept["spec"].cells()[0]
    assert designs.seed(7, cell, "confirm", None, 0) == designs.seed(7, cell, "confirm", 0.5, 0)
    assert designs.seed(7, cell, "tune", 0.01, 0) != designs.seed(7, cell, "tune", 0.1, 0)


def test_rerunning_a_finished_design_does_nothing(swept):
    again = run(swept["spec"], Options(storage=swept["url"], progress=False), echo=lambda *a: None)
    assert again.trials_run == 0 and again.finished == len(swept["trials"])


def test_report_opens_with_the_answer_and_writes_its_three_files(swept):
    out = swept["tmp"] / "reports"
    assert report_main(["report", "--storage", swept["url"], "--out", str(out), "--study", "d"]) == 0
    html = (out / "d" / "index.html").read_text()
    first = html.index("<h2")
    assert html[first:].startswith('<h2 id="the-answer">The answer</h2>')
    cells = pd.read_csv(out / "d" / "tables" / "cells.csv")
    assert len(cells) == len(swept["spec"].cells())
    assert {"bias", "activation", "optimizer", "hidden", "lr", "seeds", "fits", "success_rate", "ci_low", "ci_high",
            "median_mse", "median_evals", "seconds_per_fit", "control"} <= set(cells.columns)
    assert cells.loc[cells["optimizer"] == "lm", "lr"].isna().all()
    assert (cells["seeds"] == 6).all() and cells["control"].sum() == len(cells) // 2
    control = pd.read_csv(out / "d" / "tables" / "control.csv")
    assert list(control["activation"]) == ["sin"]
    md = (out / "d" / "report.md").read_text()
    caption = md[md.index("### The control arm"):].split("\n\n")[2]
    assert caption.startswith("The control arm's confirmed cells only"), caption
    abl = pd.read_csv(out / "d" / "tables" / "ablation.csv")
    assert list(abl["cell"]) == [r.label for r in swept["ablation"].design.rows]
    assert {"ladder", "changes", "fits", "seeds"} <= set(abl.columns)
    answer = json.loads((out / "d" / "answer.json").read_text())
    ids = [s["id"] for s in answer["sentences"]]
    assert len(ids) <= 8 and {"b1", "question", "control"} <= set(ids)
    for s in answer["sentences"]:
        assert s["text"] and isinstance(s["numbers"], dict)
    for fig in ("b1_kinks", "success_vs_budget", "ablation_ladder"):
        assert (out / "d" / "figures" / f"{fig}.png").is_file()
        assert f'id="figure-{fig}"' in html
