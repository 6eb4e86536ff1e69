"""Build a study's report folder (index.html, report.md, figures/, tables/) and the study-list page.

`build(storage_url, out, study=None)` is what `python -m analysis report` runs: one study, or every
study in the storage plus an index page linking them. Extras shared by all reports, the question's
programs (a `seed-replay` study) and R's nnet reference CSV, are loaded once.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd

from . import checks as chk
from . import design_report, figures, fmt, importance, summary
from . import tables as tbl
from .load import (ABLATION, SEED_REPLAY, ReportError, StudyData, load_nnet, load_study, mask, nnet_csv_path, open_readonly,
                   study_names)
from .render import Bullets, Document, FigureBlock, Para, Section, TableBlock, to_html, to_markdown


@dataclass
class Extras:
    """What every report shows beside its own study."""

    replay: StudyData | None
    nnet: pd.DataFrame | str | None
    ablation: StudyData | None = None  # the question's ablation, beside the designed study


@dataclass(frozen=True)
class Built:
    """A report written: the study, the path of its page, its finished trials and best value."""
    name: str
    path: Path
    finished: int
    best: float | None


def slug(name: str) -> str:
    """A folder name for a study (its name, minus characters a path should not hold)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"


def _prepare(folder: Path) -> None:
    # Figures and tables are ours: clear stale ones so that the folder matches this report.
    for sub, pattern in (("figures", "*.png"), ("tables", "*.csv")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for old in (folder / sub).glob(pattern):
            old.unlink()


def _extras_sections(data: StudyData, extras: Extras) -> list[Section]:
    blocks: list = []
    if extras.replay is not None:
        if extras.replay.trials.empty:
            blocks.append(Para(f"Study `{SEED_REPLAY}` exists but has no trials yet."))
        else:
            blocks.append(TableBlock(tbl.programs_table(extras.replay)))
    if isinstance(extras.nnet, pd.DataFrame):
        blocks.append(TableBlock(tbl.nnet_table(extras.nnet, data.threshold)))
    elif isinstance(extras.nnet, str):
        blocks.append(Para(f"R's nnet reference could not be read: {extras.nnet}"))
    return [Section("The question's programs and R's nnet", blocks)] if blocks else []


def designed_document(data: StudyData, extras: Extras, out: Path) -> tuple[Document, list[tbl.Table], dict]:
    """The report of a designed study ("The answer" first); also returns the answer for answer.json."""
    ablation = extras.ablation if extras.ablation is not None and extras.ablation.name != data.name else None
    body, tables, answer = design_report.sections(data, ablation, out)
    extra_sections = _extras_sections(data, extras)
    all_tables = tables + [t for s in extra_sections for t in (b.table for b in s.blocks if isinstance(b, TableBlock))]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"Storage {mask(data.storage_url)}; {len(data.trials)} trials ({len(data.finished)} finished); "
                f"built {now} with optuna {optuna.__version__}.")
    title = f"Study {data.name}: why does nnet fit sin(x) with four units, and which detail matters?"
    return Document(title, subtitle, body + extra_sections), all_tables, answer


def document(data: StudyData, extras: Extras, out: Path) -> tuple[Document, list[tbl.Table]]:
    """The report of one study; writes its figures under `out` and returns every table to save."""
    tables = tbl.study_tables(data)
    by_name = {t.name: t for t in tables}
    imp = importance.compute(data)
    checks = chk.run_checks(data, tables)
    figs = figures.draw_all(data, by_name, imp, out)
    extra_sections = _extras_sections(data, extras)
    words = summary.sentences(data, by_name, imp, checks)

    fixed = tbl.fixed_settings(data)
    spec = data.spec
    intro: list = [Para(spec.get("description") or "An Optuna study of 1-H-1 networks fitting sin(x) on [0, 10].")]
    for heading, items in words:
        if items:
            intro += [Para(f"**{heading}**"), Bullets(items)]
    if fixed:
        intro.append(Para("Fixed in this study: " + ", ".join(f"`{k}={fmt.lr(v) if k == 'lr' else fmt.value(v)}`"
                                                               for k, v in fixed.items()) + "."))
    sections = [Section("Summary", intro),
                Section("Figures", [FigureBlock(f) for f in figs] or [Para("No figure applies (no finished trials).")]),
                Section("Tables", [TableBlock(t) for t in tables] + [Para(
                    "Every trial, one row each (configuration, value, seed counts, provenance): "
                    "[tables/trials.csv](tables/trials.csv).")])]
    sections += extra_sections
    check_table = chk.checks_table(checks)
    imp_table = importance.importance_table(imp)
    diag: list = [TableBlock(check_table)]
    if imp_table is not None:
        diag.append(TableBlock(imp_table))
    else:
        diag.append(Para(importance.sentence(imp)))
    sections.append(Section("Checks and importances", diag))
    all_tables = tables + [t for s in extra_sections for t in (b.table for b in s.blocks if isinstance(b, TableBlock))]
    all_tables += [check_table] + ([imp_table] if imp_table is not None else [])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"Storage {mask(data.storage_url)}; {len(data.trials)} trials ({len(data.finished)} finished); "
                f"built {now} with optuna {optuna.__version__}.")
    return Document(f"Study {data.name}: which detail makes a 1-H-1 net fit sin(x)?", subtitle, sections), all_tables


def build_one(data: StudyData, extras: Extras, out_root: Path) -> Built:
    """Write one study's report folder; ReportError if the study has no finished trial."""
    if data.finished.empty:
        state = "no trials" if data.trials.empty else f"{len(data.trials)} trials, none finished"
        raise ReportError(f"study {data.name!r} is empty ({state}): nothing to report")
    out = out_root / slug(data.name)
    _prepare(out)
    if data.designed:
        doc, tables, answer = designed_document(data, extras, out)
        (out / "answer.json").write_text(json.dumps(answer, indent=2, default=_json_default), encoding="utf-8")
    else:
        doc, tables = document(data, extras, out)
    for t in tables:
        t.data.to_csv(out / "tables" / f"{t.name}.csv", index=False)
    tbl.trials_csv(data).to_csv(out / "tables" / "trials.csv", index=False)
    (out / "index.html").write_text(to_html(doc), encoding="utf-8")
    (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    best = float(data.finished["value"].min())
    return Built(data.name, out / "index.html", len(data.finished), best)


def _json_default(value: object) -> object:
    """JSON for numpy numbers and the like; NaN and inf become null."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def index_document(built: list[Built], skipped: dict[str, str], storage_url: str) -> Document:
    """The study-list page: one line per report, linking its HTML and Markdown."""
    items = [f"[{b.name}]({slug(b.name)}/index.html): {b.finished} finished trials, best median test MSE "
             f"{fmt.mse(b.best)} ([Markdown]({slug(b.name)}/report.md))" for b in built]
    blocks: list = [Bullets(items)]
    if skipped:
        blocks.append(Para("Not reported: " + "; ".join(f"`{n}` ({why})" for n, why in skipped.items()) + "."))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Document("Sine-sweep reports", f"Storage {mask(storage_url)}; built {now}.", [Section("Studies", blocks)])


def build(storage_url: str, out_root: Path, study: str | None = None) -> list[Path]:
    """Build the report of `study`, or of every study plus an index; returns the paths written."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_readonly(storage_url)
    names = study_names(storage, storage_url)
    if study is None and not names:
        raise ReportError(f"no studies in {mask(storage_url)}: run `make sweep` first")
    replay = load_study(storage, storage_url, SEED_REPLAY, names) if SEED_REPLAY in names else None
    ablation = load_study(storage, storage_url, ABLATION, names) if ABLATION in names else None
    extras = Extras(replay, load_nnet(nnet_csv_path(storage_url)), ablation)
    if study is not None:
        data = {SEED_REPLAY: replay, ABLATION: ablation}.get(study) or load_study(storage, storage_url, study, names)
        built = build_one(data, extras, out_root)
        return [built.path]
    built_all: list[Built] = []
    skipped: dict[str, str] = {}
    for name in names:
        data = {SEED_REPLAY: replay, ABLATION: ablation}.get(name) or load_study(storage, storage_url, name, names)
        try:
            built_all.append(build_one(data, extras, out_root))
        except ReportError as exc:
            # Every study was asked for: an empty one (a sweep just starting) must not sink the others.
            skipped[name] = "no finished trials"
            print(f"warning: {exc}", file=sys.stderr)
    if not built_all:
        raise ReportError(f"no study in {mask(storage_url)} has finished trials: nothing to report")
    doc = index_document(built_all, skipped, storage_url)
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "index.html").write_text(to_html(doc), encoding="utf-8")
    (out_root / "index.md").write_text(to_markdown(doc), encoding="utf-8")
    return [b.path for b in built_all] + [out_root / "index.html"]
