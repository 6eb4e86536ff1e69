"""One document, two renderings: self-contained HTML (figures linked beside it) and Markdown.

A report is built once as a `Document` of sections holding paragraphs, bullet lists, tables and
figures; `to_html` and `to_markdown` write the same content, so the two never drift apart. Text
may carry `code`, **bold**, *em* and [links](href); everything else is escaped, and `literal(text)`
backslash-escapes text (a study's name) so that none of it reads as markup. Only http(s) and
relative links become links: `[x](javascript:…)` or any other scheme stays text, in both
renderings. Table cells are plain text, each column in one number format (`fmt.columns`); in HTML
short cells never wrap and wide tables scroll sideways. Markdown tables are written here (pandas'
`to_markdown` needs `tabulate`), HTML with f-strings (a template engine would be one more place
where escaping happens, for a page that is one loop over blocks).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pandas as pd

from . import fmt
from .plotting import FigureRef
from .tables import Table


@dataclass
class Para:
    """A paragraph of inline-marked-up text."""
    text: str


@dataclass
class Bullets:
    """A bullet list, one inline-marked-up item each."""
    items: list[str]


@dataclass
class TableBlock:
    """A table, shown with its title and caption and linked to its CSV."""
    table: Table


@dataclass
class FigureBlock:
    """A figure, shown with its title and caption; `interactive`: its plotly page, if it has one."""
    figure: FigureRef
    interactive: str | None = None


Block = Union[Para, Bullets, TableBlock, FigureBlock]


@dataclass
class Section:
    """A titled section of blocks."""
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    """A whole report: title, subtitle and sections."""
    title: str
    subtitle: str
    sections: list[Section]


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_EM = re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_AUTOLINK = re.compile(r"<(https?://[^\s<>]+)>")  # CommonMark's autolink, http(s) only
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_SCIENTIFIC = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?e[-+]\d+(?![\w.])")
LITERAL = "\\`*_[]()"  # what `literal` escapes; `inline_html` reads a backslash before any of them as that character
_ESCAPED = re.compile(r"\\([\\`*_\[\]()])")
_HOLD = "\ue000{}\ue001"  # placeholders (private-use characters) for literals and links while markup is read
_HELD = re.compile("\ue000(\\d+)\ue001")


def literal(text: str) -> str:
    """`text` with every markup character backslash-escaped: it shows as itself in both renderings."""
    return "".join("\\" + c if c in LITERAL else c for c in str(text))


def safe_href(href: str) -> bool:
    """Whether a link target may be a link: http(s), or relative (no scheme at all).

    Browsers drop tabs and newlines inside a URL and ignore leading control characters and spaces,
    so the scheme is read after doing the same; any other control character, and `<>"'` and
    backticks (never in a target the report writes), refuse the link.
    """
    cleaned = re.sub(r"[\t\n\r]", "", href).lstrip("".join(map(chr, range(0x21))))
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in "<>\"'`" for c in cleaned):
        return False
    scheme = _SCHEME.match(cleaned)
    return scheme is None or scheme.group(1).lower() in ("http", "https")


def inline_html(text: str) -> str:
    """Inline markup (`code`, **bold**, *em*, [links](href), <https://autolinks>) as HTML, everything
    else escaped.

    A link whose target is not `safe_href` is shown as its text. Numbers in scientific notation are
    kept on one line (a browser would otherwise break '1.5e-04' after the minus).
    """
    held: list[str] = []

    def hold(piece: str) -> str:
        held.append(piece)
        return _HOLD.format(len(held) - 1)

    text = _ESCAPED.sub(lambda m: hold(html.escape(m.group(1))), str(text))

    def link(m: re.Match[str]) -> str:
        label, href = m.group(1), m.group(2)
        if not safe_href(href):
            return m.group(0)  # stays text: escaped and marked up like the rest
        return hold(f'<a href="{html.escape(href, quote=True)}">{_markup(label)}</a>')

    text = _AUTOLINK.sub(lambda m: hold(f'<a href="{html.escape(m.group(1), quote=True)}">'
                                        f"{html.escape(m.group(1))}</a>"), text)
    out = _markup(_LINK.sub(link, text))
    while _HELD.search(out):  # a link's label may hold literals
        out = _HELD.sub(lambda m: held[int(m.group(1))], out)
    return out


def _markup(text: str) -> str:
    """Escaped text with code, bold, em and unbreakable numbers (placeholders pass through)."""
    out = html.escape(text, quote=False)
    out = _CODE.sub(r"<code>\1</code>", out)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    out = _EM.sub(r"<em>\1</em>", out)
    return _SCIENTIFIC.sub(r'<span class="nw">\g<0></span>', out)


def plain_text(text: str) -> str:
    """Inline markup reduced to its text (for an HTML <title>)."""
    text = _AUTOLINK.sub(r"\1", _LINK.sub(r"\1", str(text)))
    return _ESCAPED.sub(r"\1", text.replace("**", "").replace("`", ""))


def markdown_safe(text: str) -> str:
    """Text for the Markdown rendering, where a viewer would make links of more than `inline_html`
    does: every `](` whose target (after the blanks and `<` Markdown allows) is not `safe_href`,
    autolinks of other schemes and link definitions at a line's start are escaped to stay text."""
    def target(m: re.Match[str]) -> str:
        dest = m.group(1).strip()
        if dest.startswith("<"):
            dest = dest[1:].split(">", 1)[0]
        return m.group(0) if safe_href(dest) else "]\\(" + m.group(0)[2:]

    text = re.sub(r"\]\(([^)]*)", target, str(text))
    text = re.sub(r"(?m)^(\s{0,3})\[([^\]\n]*)\]:", r"\1\\[\2\\]:", text)
    return re.sub(r"<(?!https?:)([A-Za-z][A-Za-z0-9+.-]*:)", r"\\<\1", text)


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; max-width: 1120px;
       margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: .6em 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d5d5d5; padding: 3px 7px; text-align: left; vertical-align: top; }
td.short, th, .nw { white-space: nowrap; } td.num { text-align: right; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.caption, .interactive, figcaption { color: #444; font-size: 13px; margin-top: 0; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f2f2f2; padding: 0 3px; border-radius: 3px; white-space: nowrap; }
li { margin: .35em 0; } nav a { margin-right: 1em; }
"""


SHORT = 40  # cells up to this long never wrap (numbers, intervals, names); longer text wraps


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _cell_text(v: object) -> str:
    return fmt.DASH if v is None or (isinstance(v, float) and v != v) else str(v)


def _html_cell(text: str, numeric: bool) -> str:
    kind = (["short"] if len(text) <= SHORT else []) + (["num"] if numeric else [])
    return f'<td class="{" ".join(kind)}">{html.escape(text)}</td>' if kind else f"<td>{html.escape(text)}</td>"


def html_table(frame: pd.DataFrame) -> str:
    """A shown table as HTML: one number format per column (numbers right-aligned), short cells
    never wrapped, in a container that scrolls sideways when the table is wider than the page."""
    frame = fmt.columns(frame)
    cells = [[_cell_text(v) for v in row] for row in frame.itertuples(index=False)]
    numeric = [all(fmt.is_number(row[j]) or row[j] == fmt.DASH for row in cells) and
               any(fmt.is_number(row[j]) for row in cells) for j in range(len(frame.columns))]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "\n".join("<tr>" + "".join(_html_cell(t, numeric[j]) for j, t in enumerate(row)) + "</tr>" for row in cells)
    return f'<div class="table-wrap"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table></div>'


def _html_table(table: Table) -> str:
    return (f'<h3 id="table-{html.escape(table.name)}">{inline_html(table.title)}</h3>\n{html_table(table.display)}\n'
            f'<p class="caption">{inline_html(table.caption)} '
            f'<a href="tables/{html.escape(table.name)}.csv">CSV</a></p>')


def _html_figure(block: FigureBlock) -> str:
    f = block.figure
    fid = html.escape(f.file.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    more = (f'<p class="interactive"><a href="{html.escape(block.interactive)}">Interactive version</a> '
            f"(hover for each point's numbers, drag to zoom; opens offline)</p>" if block.interactive else "")
    return (f'<figure id="figure-{fid}"><img src="{html.escape(f.file)}" alt="{html.escape(plain_text(f.title))}">'
            f"{more}<figcaption><strong>{inline_html(f.title)}.</strong> {inline_html(f.caption)}"
            f"</figcaption></figure>")


def figure_ids(doc: Document) -> set[str]:
    """The anchors (`figure-NAME`) of the figures a document shows."""
    return {f"figure-{Path(b.figure.file).stem}" for s in doc.sections for b in s.blocks if isinstance(b, FigureBlock)}


def _live(text: str, ids: set[str]) -> str:
    """Links to a figure the document does not show (a figure that did not apply) become their text."""
    return _LINK.sub(lambda m: m.group(1) if m.group(2).startswith("#figure-") and m.group(2)[1:] not in ids
                     else m.group(0), text)


def to_html(doc: Document) -> str:
    """The document as one self-contained HTML page (figures linked beside it)."""
    ids = figure_ids(doc)
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{html.escape(plain_text(doc.title))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{inline_html(doc.title)}</h1>", f'<p class="sub">{inline_html(doc.subtitle)}</p>']
    if len(doc.sections) > 2:
        parts.append("<nav>" + "".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>'
                                       for s in doc.sections) + "</nav>")
    for section in doc.sections:
        parts.append(f'<h2 id="{_anchor(section.title)}">{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Para):
                parts.append(f"<p>{inline_html(_live(block.text, ids))}</p>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{inline_html(_live(i, ids))}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, TableBlock):
                parts.append(_html_table(block.table))
            elif isinstance(block, FigureBlock):
                parts.append(_html_figure(block))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame's text (one number format per column, pipes
    escaped, newlines flattened, unsafe links defused)."""
    frame = fmt.columns(frame)

    def cell(v: object) -> str:
        return markdown_safe(_cell_text(v)).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _md_links(text: str) -> str:
    """Links to a figure's anchor point at its PNG in Markdown (no anchors there); unsafe links defused."""
    return markdown_safe(re.sub(r"\(#figure-([A-Za-z0-9_-]+)\)", r"(figures/\1.png)", text))


def to_markdown(doc: Document) -> str:
    """The document as Markdown, with the same content as the HTML."""
    ids = figure_ids(doc)
    parts = [f"# {_md_links(doc.title)}", "", f"_{_md_links(doc.subtitle)}_", ""]
    for section in doc.sections:
        parts += [f"## {markdown_safe(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Para):
                parts += [_md_links(_live(block.text, ids)), ""]
            elif isinstance(block, Bullets):
                parts += [f"- {_md_links(_live(i, ids))}" for i in block.items] + [""]
            elif isinstance(block, TableBlock):
                t = block.table
                parts += [f"### {_md_links(t.title)}", "", markdown_table(t.display), "",
                          f"{_md_links(t.caption)} [CSV](tables/{t.name}.csv)", ""]
            elif isinstance(block, FigureBlock):
                f = block.figure
                more = [f"[Interactive version]({block.interactive}) (hover, zoom; opens offline)", ""] \
                    if block.interactive else []
                parts += [f"![{plain_text(f.title)}]({f.file})", "", *more, f"*{_md_links(f.title)}.* {_md_links(f.caption)}",
                          ""]
    return "\n".join(parts).rstrip() + "\n"
