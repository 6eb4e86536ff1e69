"""Build a study's report folder (index.html, report.md, figures/, tables/, interactive/) and the
study-list page.

`build(storage_url, out, study=None)` is what `python -m analysis report` runs: one study, or every
study in the storage; either way the index page (OUT/index.html) is rebuilt from every report
folder under OUT (each holds a `report.json` saying what it is). Extras shared by all reports, the
question's programs (a `seed-replay` study) and R's nnet reference CSV, are loaded once.

A report is written into a hidden folder beside its final place and moved there only when
complete, so an error or Ctrl-C never leaves a half-written report (the previous one stays). Each
study gets its own folder: its name when that is a safe folder name, else the name made safe plus
a hash of the name (`slug`), so that `a/b` and `a_b` never share one.

Over 300 lines on purpose: a report folder's whole life (its documents, written aside, moved into
place, listed in the index) stays in one module, so that what is written and what the index reads
of it cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd

from sweeps.console import EXIT_INTERRUPTED

from . import checks as chk
from . import design_report, figures, fmt, importance, interactive, summary
from . import tables as tbl
from .load import (ABLATION, SEED_REPLAY, ReportError, StudyData, load_nnet, load_study, mask, nnet_csv_path, open_readonly,
                   study_names)
from .render import Bullets, Document, FigureBlock, Para, Section, TableBlock, literal, to_html, to_markdown

# Where `sweeps dashboard` serves a study by default (sweeps.dashboard.serve's DEFAULT_HOST and
# DEFAULT_PORT; analysis may not import the dashboard, tests/dashboard check that the two agree).
DASHBOARD_URL = "http://127.0.0.1:8080/dashboard"
META = "report.json"  # in each report folder: what the index page says of it
RESERVED = {"index.html", "index.md"}  # files of the reports folder itself


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
    """A study's folder name, unique per name: the name itself when it is a safe folder name
    (letters, digits, `.`, `_`, `-`, lower case, not starting with `.`, at most 80 characters), else
    the name made safe plus `~` and a hash of the name (no study name holds `~`, and a folder
    name differing only in case would collide on case-insensitive file systems)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:80].lower() or "study"
    if clean == name and name not in RESERVED:
        return clean
    return f"{clean}~{hashlib.sha256(name.encode('utf-8')).hexdigest()[:10]}"


def dashboard_url(study_id: int | None) -> str | None:
    """The study's page in `sweeps dashboard` on its default address (None without an id)."""
    return f"{DASHBOARD_URL}/studies/{study_id}" if study_id is not None else None


def _subtitle(data: StudyData, dashboard: str | None) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"Storage {literal(mask(data.storage_url))}; {len(data.trials)} trials ({len(data.finished)} finished); "
            f"built {now} with optuna {optuna.__version__}.")
    if dashboard:
        text += f" In the dashboard (`sweeps dashboard` on its default port): <{dashboard}>."
    return text


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


def designed_document(data: StudyData, extras: Extras, out: Path,
                      dashboard: str | None = None) -> tuple[Document, list[tbl.Table], dict]:
    """The report of a designed study ("The answer" first); also returns the answer for answer.json."""
    ablation = extras.ablation if extras.ablation is not None and extras.ablation.name != data.name else None
    body, tables, answer = design_report.sections(data, ablation, out)
    extra_sections = _extras_sections(data, extras)
    all_tables = tables + [t for s in extra_sections for t in (b.table for b in s.blocks if isinstance(b, TableBlock))]
    title = f"Study {literal(data.name)}: why does nnet fit sin(x) with four units, and which detail matters?"
    return Document(title, _subtitle(data, dashboard), body + extra_sections), all_tables, answer


def document(data: StudyData, extras: Extras, out: Path, dashboard: str | None = None) -> tuple[Document, list[tbl.Table]]:
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
        optimizers = data.finished["optimizer"].dropna().tolist()
        intro.append(Para(f"Fixed in this study: {fmt.settings(fixed, optimizers)}."))
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
    return Document(f"Study {literal(data.name)}: which detail makes a 1-H-1 net fit sin(x)?", _subtitle(data, dashboard),
                    sections), all_tables


def build_one(data: StudyData, extras: Extras, out_root: Path, dashboard: str | None = None) -> Built:
    """Write one study's report folder (atomically, see the module docstring); ReportError if the
    study has no finished trial or the folder cannot be written."""
    if data.finished.empty:
        state = "no trials" if data.trials.empty else f"{len(data.trials)} trials, none finished"
        raise ReportError(f"study {data.name!r} is empty ({state}): nothing to report")
    final = out_root / slug(data.name)
    try:
        tmp = _fresh_folder(out_root, f".{final.name}.tmp-")
    except OSError as exc:
        raise ReportError(f"cannot write the report of {data.name!r} in {out_root}: {exc.strerror or exc}") from None
    try:
        _write(data, extras, tmp, dashboard)
        _commit(tmp, final)
    except OSError as exc:
        raise ReportError(f"cannot write the report of {data.name!r} to {final}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():  # an error or Ctrl-C before the move: nothing half-written stays
            shutil.rmtree(tmp, ignore_errors=True)
    best = float(data.finished["value"].min())
    return Built(data.name, final / "index.html", len(data.finished), best)


def _write(data: StudyData, extras: Extras, out: Path, dashboard: str | None) -> None:
    """Every file of a report into `out` (a fresh folder)."""
    for sub in ("figures", "tables"):
        (out / sub).mkdir()
    if data.designed:
        doc, tables, answer = designed_document(data, extras, out, dashboard)
        (out / "answer.json").write_text(json.dumps(answer, indent=2, default=_json_default), encoding="utf-8")
    else:
        doc, tables = document(data, extras, out, dashboard)
    _link_interactive(doc, interactive.write_all(data, extras.ablation, out, _figure_names(doc)))
    for t in tables:
        t.data.to_csv(out / "tables" / f"{t.name}.csv", index=False)
    tbl.trials_csv(data).to_csv(out / "tables" / "trials.csv", index=False)
    (out / "index.html").write_text(to_html(doc), encoding="utf-8")
    (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    best = data.finished["value"].min()
    meta = {"study": data.name, "folder": out.name, "finished": len(data.finished), "trials": len(data.trials),
            "best": float(best) if math.isfinite(best) else None, "designed": data.designed,
            "storage": mask(data.storage_url), "dashboard": dashboard,
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _figure_names(doc: Document) -> set[str]:
    return {Path(b.figure.file).stem for s in doc.sections for b in s.blocks if isinstance(b, FigureBlock)}


def _link_interactive(doc: Document, pages: dict[str, str]) -> None:
    """Point each figure that has an interactive page at it."""
    for section in doc.sections:
        for block in section.blocks:
            if isinstance(block, FigureBlock):
                block.interactive = pages.get(Path(block.figure.file).stem)


def _fresh_folder(parent: Path, prefix: str) -> Path:
    """A new, empty, hidden folder in `parent` (made with the umask's permissions, unlike mkdtemp)."""
    while True:
        path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _commit(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` in the place of `final` (renames: both in one folder).

    The previous report is moved aside first and deleted last; if anything stops the swap half way,
    the previous report is moved back.
    """
    aside = None
    try:
        if final.exists():
            aside = _fresh_folder(final.parent, f".{final.name}.old-")
            os.rename(final, aside / final.name)
        os.rename(tmp, final)
    except BaseException:
        if aside is not None and not final.exists() and (aside / final.name).exists():
            os.rename(aside / final.name, final)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _json_default(value: object) -> object:
    """JSON for numpy numbers and the like; NaN and inf become null."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Listed:
    """A report folder as the index lists it (from its report.json; None where an old report has none)."""
    folder: str
    meta: dict | None


def listed(out_root: Path) -> list[Listed]:
    """Every report folder under `out_root` (hidden folders, being written, left out), by study name."""
    out = []
    for folder in sorted(p for p in out_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "index.html").is_file():
            continue
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        out.append(Listed(folder.name, meta if isinstance(meta, dict) else None))
    return sorted(out, key=lambda e: ((e.meta or {}).get("study") or e.folder).lower())


def index_document(entries: list[Listed], skipped: dict[str, str]) -> Document:
    """The study-list page: one line per report folder, linking its HTML and Markdown."""
    items = []
    for e in entries:
        m = e.meta or {}
        name = literal(m.get("study") or e.folder)
        line = f"[{name}]({e.folder}/index.html)"
        if m:
            built = str(m.get("built") or "?").replace("T", " ")[:16]
            line += (f": {m.get('finished')} finished trials, best median test MSE {fmt.mse(m.get('best'))}; "
                     f"storage {literal(str(m.get('storage')))}, built `{literal(built)} UTC`")
        else:
            line += ": a report written before reports said what they hold (build it again for its numbers)"
        items.append(line + f" ([Markdown]({e.folder}/report.md))")
    blocks: list = [Bullets(items)] if items else [Para("No report folders.")]
    if skipped:
        blocks.append(Para("Not reported: " + "; ".join(f"`{literal(n)}` ({why})" for n, why in skipped.items()) + "."))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Document("Sine-sweep reports", f"Every report folder here; rebuilt {now} whenever a report is written.",
                    [Section("Studies", blocks)])


def write_index(out_root: Path, skipped: dict[str, str] | None = None) -> Path:
    """Rebuild OUT/index.html and index.md from every report folder present; returns the HTML's path."""
    doc = index_document(listed(out_root), skipped or {})
    for name, text in (("index.html", to_html(doc)), ("index.md", to_markdown(doc))):
        tmp = out_root / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out_root / name)
        finally:
            tmp.unlink(missing_ok=True)
    return out_root / "index.html"


def _writable(out_root: Path) -> None:
    """ReportError (one line) unless `out_root` is, or can be made, a folder this process can write."""
    if out_root.exists() and not out_root.is_dir():
        raise ReportError(f"--out {out_root} is a file, not a folder")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        probe = _fresh_folder(out_root, ".probe-")
        probe.rmdir()
    except OSError as exc:
        raise ReportError(f"cannot write reports to {out_root}: {exc.strerror or exc}") from None


def build(storage_url: str, out_root: Path, study: str | None = None) -> list[Path]:
    """Build the report of `study`, or of every study; rebuild the index; returns the paths written
    (the study's page for one study; every page, the index last, for all).

    Ctrl-C stops it with one line on stderr and exit code 130 (`SystemExit`), leaving every report
    folder as it was before.
    """
    try:
        return _build(storage_url, Path(out_root), study)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted: no report was left half written (each is moved into place only "
                         "when complete)\n")
        raise SystemExit(EXIT_INTERRUPTED) from None


def _build(storage_url: str, out_root: Path, study: str | None) -> list[Path]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_readonly(storage_url)
    names = study_names(storage, storage_url)
    if study is None and not names:
        raise ReportError(f"no studies in {mask(storage_url)}: run `make sweep` first")
    if study is not None and study not in names:
        load_study(storage, storage_url, study, names)  # the one-line "no study" error, before touching --out
    _writable(out_root)
    replay = load_study(storage, storage_url, SEED_REPLAY, names) if SEED_REPLAY in names else None
    ablation = load_study(storage, storage_url, ABLATION, names) if ABLATION in names else None
    extras = Extras(replay, load_nnet(nnet_csv_path(storage_url)), ablation)

    def load(name: str) -> StudyData:
        return {SEED_REPLAY: replay, ABLATION: ablation}.get(name) or load_study(storage, storage_url, name, names)

    if study is not None:
        built = build_one(load(study), extras, out_root, dashboard_url(_study_id(storage, study)))
        write_index(out_root)
        return [built.path]
    built_all: list[Built] = []
    skipped: dict[str, str] = {}
    for name in names:
        data = load(name)
        if data.finished.empty:
            # Every study was asked for: an empty one (a sweep just starting) must not sink the others.
            skipped[name] = "no finished trials"
            print(f"warning: study {name!r} has no finished trials: not reported", file=sys.stderr)
            continue
        built_all.append(build_one(data, extras, out_root, dashboard_url(_study_id(storage, name))))
    if not built_all:
        raise ReportError(f"no study in {mask(storage_url)} has finished trials: nothing to report")
    return [b.path for b in built_all] + [write_index(out_root, skipped)]


def _study_id(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except Exception:  # the link is a convenience: a storage that cannot say leaves it out
        return None
