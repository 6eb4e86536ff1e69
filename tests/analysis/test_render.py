"""The report as a reader sees it: safe links, one number format per column, unique folders, the
index, interactive figures, atomic writes, bad --out, Ctrl-C; and a designed study's report in a
real headless browser (its DOM, its images, a screenshot).

One storage holds a small designed study (`d`), its ablation, and two TPE studies named `a/b` and
`a_b` whose description carries a javascript: link; every report is built once per module.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest

from analysis import fmt
from analysis import report as rpt
from analysis.cli import main
from analysis.render import inline_html, literal, markdown_safe, markdown_table, safe_href
from kit import ABLATION, DESIGN, TINY, write_spec
from sweeps.study import spec as specs
from sweeps.study.runner import Options, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "[click](javascript:alert(1))"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUIET = {"echo": lambda *a, **k: None}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every report of a storage with a designed study, its ablation and two clashing TPE names."""
    tmp = tmp_path_factory.mktemp("render")
    url = f"sqlite:///{tmp / 'studies.db'}"
    run(specs.load(str(write_spec(tmp / "d.toml", DESIGN, confirm=4, steps=200, biases='["none", "both"]'))),
        Options(storage=url, progress=False), **QUIET)
    run(specs.load(str(write_spec(tmp / "ablation.toml", ABLATION, steps=200))), Options(storage=url, progress=False),
        **QUIET)
    tiny = TINY.replace('name = "tiny"', f'name = "tiny"\ndescription = "see {EVIL}"')
    for name in ("a/b", "a_b"):  # names sweeps would refuse, but any Optuna tool can make
        run(specs.load(str(write_spec(tmp / "tiny.toml", tiny))), Options(storage=url, trials=2, progress=False,
                                                                           study_name=name), **QUIET)
    out = tmp / "reports"
    assert main(["report", "--storage", url, "--out", str(out)]) == 0
    return {"tmp": tmp, "url": url, "out": out}


# --- links and markup -------------------------------------------------------------------------

@pytest.mark.parametrize("href", ["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)",
                                  "\x01javascript:alert(1)", "java\x00script:alert(1)", "data:text/html,<b>x</b>",
                                  "vbscript:msgbox(1)", "file:///etc/passwd"])
def test_only_http_and_relative_links_become_links(href):
    assert not safe_href(href)
    assert "<a " not in inline_html(f"[x]({href})")
    for text in (f"[x]({href})", f"[x]( {href})", f"[x](<{href}>)", f"[x]\n\n[x]: {href}"):
        md = markdown_safe(text)
        assert "](" not in md and not re.search(r"(?m)^\s*\[x\]:", md), md  # a Markdown viewer shows text


@pytest.mark.parametrize("href", ["https://example.org/a?b=1&c=2", "http://127.0.0.1:8080/dashboard", "tables/cells.csv",
                                  "#figure-b1_kinks", "../index.html"])
def test_http_and_relative_links_stay_links(href):
    assert safe_href(href)
    assert inline_html(f"[x]({href})") == f'<a href="{html.escape(href, quote=True)}">x</a>'
    assert markdown_safe(f"[x]({href})") == f"[x]({href})"


def test_literal_text_shows_as_itself():
    name = "a_b*[x](javascript:alert(1))`c`"
    assert inline_html(literal(name)) == html.escape(name, quote=False)
    assert "<strong>" not in inline_html(literal("**bold**"))


def test_no_javascript_link_anywhere_in_the_reports(built):
    for page in built["out"].rglob("*.html"):
        if page.parent.name == "interactive":
            continue
        text = page.read_text()
        assert not re.search(r"href\s*=\s*[\"']?\s*javascript:", text, re.I), page
        if page.parent.name in (rpt.slug("a/b"), rpt.slug("a_b")):
            assert "javascript:alert(1)" in text  # shown as text, not dropped
    for md in built["out"].rglob("*.md"):
        assert "](javascript:" not in md.read_text(), md


def test_clashing_names_get_their_own_folders(built):
    out = built["out"]
    folders = {rpt.slug("a/b"), rpt.slug("a_b")}
    assert len(folders) == 2 and "a_b" in folders
    for name in ("a/b", "a_b"):
        meta = json.loads((out / rpt.slug(name) / "report.json").read_text())
        assert meta["study"] == name
        assert f"Study {html.escape(name)}:" in (out / rpt.slug(name) / "index.html").read_text()


@pytest.mark.parametrize("name", ["default", "seed-replay", "quick.2", "a_b"])
def test_safe_names_are_their_own_folders(name):
    assert rpt.slug(name) == name


def test_slug_is_unique_and_safe():
    names = ["a/b", "a_b", "a b", "A_b", "a_B", ".hidden", "index.html", "", "x" * 200, "é", "e", "a//b", "a/ b"]
    slugs = [rpt.slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    for s in slugs:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._~-]*", s) and len(s) <= 91 and s not in rpt.RESERVED
    assert rpt.slug("a/b") == rpt.slug("a/b")  # stable across runs


# --- numbers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cells, expected", [
    (["0.461", "0.474", "3.81e-04", "–", "inf"], ["4.61e-01", "4.74e-01", "3.81e-04", "–", "inf"]),
    (["0.00113", "0.0481", "0.333"], ["0.00113", "0.0481", "0.333"]),
    (["3.3e-05 s", "0.00048 s"], ["3.3e-05 s", "4.8e-04 s"]),
    (["1", "0.746"], ["1.00", "0.746"]),
    (["300", "146", "10000"], ["300", "146", "10000"]),  # counts stay as they are
    (["1e-05", "0.01", "none (second order)"], ["1e-05", "1e-02", "none (second order)"]),
    (["6/6: 100% [61, 100]", "#3 (50%)"], ["6/6: 100% [61, 100]", "#3 (50%)"]),
])
def test_one_number_format_per_column(cells, expected):
    assert fmt.column(cells) == expected


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):  # noqa: ANN001
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):  # noqa: ANN001
        if self.cell is not None:
            self.cell.append(data)


def _style(cell: str) -> str | None:
    """'sci' or 'plain' for a cell that is a number with a fraction or exponent, else None."""
    m = re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]\d+)?( s)?", cell)
    if not m or not (m.group(1) or m.group(2)):
        return None
    return "sci" if m.group(2) else "plain"


def test_every_shown_column_has_one_number_format(built):
    pages = [built["out"] / folder / "index.html" for folder in ("d", "ablation", "a_b")]
    seen = 0
    for page in pages:
        parser = _Tables()
        parser.feed(page.read_text())
        for table in parser.tables:
            for j in range(len(table[0])):
                styles = {_style(row[j]) for row in table[1:] if j < len(row)} - {None}
                assert len(styles) <= 1, (page, table[0][j], [row[j] for row in table[1:]])
                seen += bool(styles)
    assert seen >= 5


def test_settings_an_optimizer_does_not_use_are_said_so():
    assert fmt.settings({"data": "r50", "lr": 0.01, "precision": "float32", "abstol": 1e-4}, ["adam", "lm"]) == (
        "`data=r50`, `lr=0.01` (first-order only), `precision=float32` (first-order only), "
        "`abstol=1.00e-04` (second-order only)")
    assert fmt.settings({"lr": 0.01, "abstol": 1e-4}, ["lm"]) == "`abstol=1.00e-04`; unused by lm: `lr`"
    assert fmt.config({"optimizer": "lm", "lr": 0.01, "hidden": 4}, ["hidden", "optimizer", "lr"]) == "hidden=4, optimizer=lm"


def test_markdown_tables_share_the_column_format():
    import pandas as pd

    text = markdown_table(pd.DataFrame({"mse": ["0.5", "1.5e-04"], "n": ["1", "2"]}))
    assert text.splitlines()[2:] == ["| 5.0e-01 | 1 |", "| 1.5e-04 | 2 |"]  # 2 figures: the most either shows


# --- folders, the index, the dashboard link ------------------------------------------------------------

def test_index_is_rebuilt_from_every_folder_whenever_a_report_is_written(built, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "r"
    (out / "old").mkdir(parents=True)
    (out / "old" / "index.html").write_text("<p>an older report</p>")
    (out / ".d.tmp-1-abc").mkdir()  # another report being written: not listed
    assert main(["report", "--storage", built["url"], "--study", "a_b", "--out", str(out)]) == 0
    first = (out / "index.html").read_text()
    assert 'href="a_b/index.html"' in first and 'href="old/index.html"' in first
    assert 'href="d/index.html"' not in first and ".d.tmp" not in first
    assert main(["report", "--storage", built["url"], "--study", "d", "--out", str(out)]) == 0
    second = (out / "index.html").read_text()
    assert all(f'href="{f}/index.html"' in second for f in ("a_b", "d", "old"))
    assert capsys.readouterr().out.splitlines() == [str(out / "a_b" / "index.html"), str(out / "d" / "index.html")]


def test_report_links_to_its_dashboard_page(built):
    storage = optuna.storages.RDBStorage(built["url"])
    sid = storage.get_study_id_from_name("d")
    page = (built["out"] / "d" / "index.html").read_text()
    assert f'href="{rpt.DASHBOARD_URL}/studies/{sid}"' in page


def test_figures_link_their_interactive_pages_which_open_offline(built):
    folder = built["out"] / "d"
    page = (folder / "index.html").read_text()
    pages = sorted((folder / "interactive").glob("*.html"))
    assert {p.stem for p in pages} >= {"success_all_cells", "ablation_ladder"}
    assert (folder / "interactive" / "plotly.min.js").stat().st_size > 1_000_000
    for p in pages:
        assert f'href="interactive/{p.name}"' in page  # linked from the report
        assert (folder / "figures" / f"{p.stem}.png").is_file()  # beside the PNG it goes with
        text = p.read_text()
        scripts = re.findall(r'<script[^>]*src="([^"]+)"', text)
        assert scripts == ["plotly.min.js"], scripts  # no CDN: opens offline
    assert "confirmation trial #" in (folder / "interactive" / "success_all_cells.html").read_text()
    tpe = built["out"] / "a_b" / "interactive"
    assert {p.stem for p in tpe.glob("*.html")} >= {"history"}


# --- bad --out, errors and Ctrl-C leave nothing half written ------------------------------------

def _one_line_error(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_out_that_is_a_file_is_a_one_line_error(built, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    for out in (target, target / "below"):
        assert main(["report", "--storage", built["url"], "--study", "d", "--out", str(out)]) == 2
        assert "error:" in _one_line_error(capsys)
    assert target.read_text() == "not a folder"


def test_out_that_cannot_be_written_is_a_one_line_error(built, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        out = folder / "reports"
        if os.access(folder, os.W_OK):  # root writes anyway: try a file system that refuses everyone
            out = Path("/sys/sweeps-report-test")
            try:
                out.mkdir()
            except OSError:
                pass
            else:
                out.rmdir()
                pytest.skip("no folder here refuses writes")
        assert main(["report", "--storage", built["url"], "--study", "d", "--out", str(out)]) == 2
        assert "cannot write reports to" in _one_line_error(capsys)
    finally:
        folder.chmod(0o700)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous(built, tmp_path) -> Path:
    """A copy of the reports folder, as a previous run left it."""
    out = tmp_path / "r"
    shutil.copytree(built["out"], out)
    return out


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_a_report_stopped_half_way_leaves_the_previous_one(built, previous, monkeypatch, capsys, error):
    before = _snapshot(previous / "d")

    def stop(*args, **kwargs):  # noqa: ANN002, ANN003
        raise error

    monkeypatch.setattr(rpt.tbl, "trials_csv", stop)  # after the figures, before the pages
    if error is KeyboardInterrupt:
        with pytest.raises(SystemExit) as exc:
            main(["report", "--storage", built["url"], "--study", "d", "--out", str(previous)])
        assert exc.value.code == 130
        assert "interrupted" in _one_line_error(capsys)
    else:
        assert main(["report", "--storage", built["url"], "--study", "d", "--out", str(previous)]) == 2
        assert "No space left on device" in _one_line_error(capsys)
    assert _snapshot(previous / "d") == before
    assert not [p for p in previous.iterdir() if p.name.startswith(".")]


def test_sigint_during_a_report_is_one_line_and_leaves_the_previous_one(built, previous):
    before = _snapshot(previous / "d")
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "report", "--storage", built["url"], "--study", "d",
                             "--out", str(previous)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(previous.glob(".d.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines() == [err.strip()] and "interrupted" in err
    assert _snapshot(previous / "d") == before
    assert not [p for p in previous.iterdir() if p.name.startswith(".")]


# --- the designed study's report in a real browser ---------------------------------------------------

PROBE = """<script>
window.addEventListener("load", () => {
  const lines = td => { const r = document.createRange(); r.selectNodeContents(td); return r.getClientRects().length; };
  const out = {
    h2: [...document.querySelectorAll("h2")].map(h => h.textContent),
    images: [...document.images].map(i => [i.getAttribute("src"), i.naturalWidth, i.naturalHeight]),
    wrapped: [...document.querySelectorAll("td.short")].filter(td => lines(td) > 1).map(td => td.textContent),
    scrolls: [...document.querySelectorAll(".table-wrap")].map(d => [d.scrollWidth, d.clientWidth,
                                                                     getComputedStyle(d).overflowX]),
    width: document.documentElement.scrollWidth, viewport: window.innerWidth,
  };
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str) -> str:
    """Run headless Chromium (no network: a dead proxy) and return its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}",
                            "--virtual-time-budget=15000", *args], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def probe(page: Path, width: int) -> dict:
    """Load a copy of `page` (same folder, so its figures resolve) with PROBE and read what it found."""
    copy = page.with_name("_probe.html")
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        dom = chromium(f"--window-size={width},1200", "--dump-dom", copy.as_uri())
    finally:
        copy.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")


@needs_chromium
def test_browser_shows_the_answer_first_and_every_figure(built):
    page = built["out"] / "d" / "index.html"
    found = probe(page, 1280)
    assert found["h2"][0] == "The answer", found["h2"]
    assert {"The design", "Figures", "Tables"} <= set(found["h2"])
    pngs = sorted(p.name for p in (page.parent / "figures").glob("*.png"))
    shown = {Path(src).name: (w, h) for src, w, h in found["images"]}
    assert sorted(shown) == pngs and len(pngs) >= 4
    assert all(w > 0 and h > 0 for w, h in shown.values()), shown  # every image loaded
    assert found["wrapped"] == []  # no number or short cell broken across lines


@needs_chromium
def test_wide_tables_scroll_instead_of_wrapping_numbers(built):
    found = probe(built["out"] / "d" / "index.html", 520)
    assert found["wrapped"] == [], found["wrapped"]
    assert all(overflow == "auto" for _, _, overflow in found["scrolls"])
    assert any(scroll > client for scroll, client, _ in found["scrolls"])  # at 520 px some table is wider
    assert found["width"] <= found["viewport"] + 1  # the page itself does not scroll sideways


@needs_chromium
def test_screenshot_of_the_designed_report(built, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    chromium("--window-size=1280,2400", f"--screenshot={shot}", (built["out"] / "d" / "index.html").as_uri())
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    counts = image.histogram()  # pixels per grey level
    ink = sum(counts[:200]) / sum(counts)
    assert 0.02 < ink < 0.6, ink  # text and figures, not a blank or a solid page
    assert sum(1 for c in counts if c) > 64  # shades of a rendered page, not a flat colour
    keep = os.environ.get("SWEEPS_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "designed_report.png")


@needs_chromium
def test_interactive_page_renders_offline(built):
    dom = chromium("--window-size=1100,1000", "--dump-dom",
                   (built["out"] / "d" / "interactive" / "success_all_cells.html").as_uri())
    assert 'class="main-svg"' in dom and "heatmaplayer" in dom
