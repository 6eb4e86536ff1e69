"""Which trials a study's dashboard note cites, and why: the trials that answer the question.

- A designed study (`sampler = "design"`): the answer's sentences (`analysis.answer`, from the
  confirmed cells, `analysis.cells.confirmed`) and the confirmation trials behind them: the best
  confirmed cell of each bias placement and, at the question's four hidden units (both biases
  where run), of each optimizer; the control arm's best cell apart. An ablation (rows, not
  crossed cells): its start row, the single change that helps most, the first row of the path to
  nnet's call that fits reliably and the path's end.
- Any other study: the best COMPLETE trial of each bias placement among non-control units (the
  `sin` units represent the target exactly), and the best control trial apart.

"Best" is the most seeds fit, then the lowest median test MSE, as the answer ranks cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from analysis.answer import RELIABLE, Sentence, ablation_sentence, answer
from analysis.cells import Cells, comparison, confirmed, design_of
from analysis.load import ABLATION, StudyData, load_study, study_names
from analysis.stats import wilson

from ..config import BIASES
from ..study import rdb
from ..study.record import read

CONTROL = ("sin",)  # activations that represent sin(x) exactly: the control arm, never a headline
FOUR = 4  # the question's hidden size


@dataclass
class Cited:
    """A trial a note cites: why (one line per reason), and what it is."""

    trial: FrozenTrial
    why: list[str]
    control: bool = False
    cell: str | None = None  # a designed study's cell label
    study: str | None = None  # the study it belongs to, when not the note's own


@dataclass
class Answer:
    """What a designed study's note says: the answer's sentences and the trials behind them."""

    sentences: list[Sentence]
    cited: list[Cited]
    ablation_id: int | None = None  # the ablation study's id, when its sentence comes from there
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # an ablation's rows, one per trial


def best_by_bias(trials: Iterable[FrozenTrial], exclude: tuple[str, ...] = CONTROL) -> dict[str, FrozenTrial]:
    """The best COMPLETE trial of each bias placement present, in the order none/hidden/output/both,
    leaving out trials whose activation is in `exclude` (the control arm by default)."""
    best: dict[str, FrozenTrial] = {}
    for t in trials:
        rec = read(t)
        bias = rec.bias
        if t.state != TrialState.COMPLETE or t.value is None or math.isnan(t.value) or bias is None:
            continue
        if rec.config.get("activation") in exclude:
            continue
        if bias not in best or _rank(t) < _rank(best[bias]):
            best[bias] = t
    order = {b: i for i, b in enumerate(BIASES)}
    return dict(sorted(best.items(), key=lambda kv: order.get(kv[0], len(order))))


def best_control(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The best COMPLETE trial of the control arm (`sin` units), if any."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and not math.isnan(t.value)
            and read(t).config.get("activation") in CONTROL]
    return min(done, key=_rank) if done else None


def _rank(t: FrozenTrial) -> tuple[float, float]:
    return (t.value if t.value is not None else math.inf, -(read(t).success_rate or 0.0))


def searched(trials: list[FrozenTrial]) -> list[Cited]:
    """A searched study's cited trials: best per bias placement, then the control's best."""
    out = [Cited(t, [f"best with bias = `{bias}` (non-control units)"]) for bias, t in best_by_bias(trials).items()]
    ctrl = best_control(trials)
    if ctrl is not None:
        out.append(Cited(ctrl, ["control arm: the best trial with `sin` units"], control=True))
    return out


def designed(study: optuna.Study) -> Answer:
    """A designed study's answer and the confirmation trials it rests on (see the module docstring)."""
    storage = rdb.storage_of(study)
    where = "the study's storage"
    names = study_names(storage, where)
    data = load_study(storage, where, study.study_name, names)
    cells = confirmed(data)
    design = design_of(data)
    if data.name == ABLATION or (design.get("rows") and not design.get("crossed")):
        return Answer([ablation_sentence(cells)], _ablation_picks(data, cells), rows=cells.frame)
    other = load_study(storage, where, ABLATION, names) if ABLATION in names else None
    abl = confirmed(other) if other is not None else None
    ablation_id = storage.get_study_id_from_name(ABLATION) if other is not None else None
    return Answer(answer(cells, abl), _cell_picks(data, cells), ablation_id)


def _best(frame: pd.DataFrame) -> pd.Series | None:
    if frame.empty:
        return None
    return frame.sort_values(["fits", "median_mse", "trial"], ascending=[False, True, True]).iloc[0]


def _cell_picks(data: StudyData, cells: Cells) -> list[Cited]:
    """Best confirmed cell per bias placement and per optimizer at four units; the control's best."""
    picks: dict[int, Cited] = {}

    def add(row: pd.Series | None, why: str, control: bool = False) -> None:
        if row is None:
            return
        number = int(row["trial"])
        if number not in picks:
            picks[number] = Cited(data.frozen[number], [], control=control, cell=str(row["cell"]))
        picks[number].why.append(why)

    if cells.frame.empty:
        return []
    comp = comparison(cells.frame)
    for bias in BIASES:
        add(_best(comp[comp["bias"] == bias]), f"best confirmed cell with bias = `{bias}`")
    four = comp[comp["hidden"] == FOUR]
    both = four[four["bias"] == "both"]
    four, where = (both, "four hidden units, both biases") if len(both) else (four, "four hidden units")
    for opt in dict.fromkeys(four["optimizer"]):
        add(_best(four[four["optimizer"] == opt]), f"best confirmed cell with optimizer = `{opt}` at {where}")
    ctrl = cells.frame[cells.frame["control"]]
    add(_best(ctrl), "control arm: its best confirmed cell (units that represent sin(x) exactly)", control=True)
    return list(picks.values())


def _ablation_picks(data: StudyData, cells: Cells) -> list[Cited]:
    """An ablation's start row, best single change, first reliable path row and the path's end."""
    frame = cells.frame
    if frame.empty:
        return []
    picks: dict[int, Cited] = {}

    def add(row: pd.Series | None, why: str) -> None:
        if row is not None:
            number = int(row["trial"])
            picks.setdefault(number, Cited(data.frozen[number], [], cell=str(row["cell"]))).why.append(why)

    add(_best(frame[frame["ladder"] == "start"]), "the question's program (the ablation's start)")
    add(_best(frame[frame["ladder"] == "one change"]), "the single change that helps most")
    path = frame[frame["ladder"] == "cumulative"].reset_index(drop=True)
    if len(path):
        low, _ = wilson(path["fits"].to_numpy(float), path["seeds"].to_numpy(float))
        reliable = path[low > RELIABLE]
        if len(reliable):
            add(reliable.iloc[0], "the first step of the path to nnet's call that fits reliably")
        add(path.iloc[-1], "the end of the path to nnet's call")
    return list(picks.values())
