"""One document, two renderings: self-contained HTML (figures linked beside it) and Markdown.

A report is built once as a `Document` of sections holding paragraphs, bullet lists, tables and
figures; `to_html` and `to_markdown` write the same content, so the two never drift apart. Text
may carry `code`, **bold** and [links](href); everything else is escaped. Markdown tables are
written here (pandas' `to_markdown` would need the `tabulate` package for a dozen lines of work).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Union

import pandas as pd

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
    """A figure, shown with its title and caption."""
    figure: FigureRef


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


def inline_html(text: str) -> str:
    """Inline markup (`code`, **bold**, *em*, [links](href)) as HTML, everything else escaped."""
    out = html.escape(text, quote=False)
    out = _CODE.sub(r"<code>\1</code>", out)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    out = _EM.sub(r"<em>\1</em>", out)
    return _LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', out)


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; max-width: 1120px;
       margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #d5d5d5; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.caption { color: #444; font-size: 13px; margin-top: 0; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; }
code { background: #f2f2f2; padding: 0 3px; border-radius: 3px; }
li { margin: .35em 0; }
nav a { margin-right: 1em; }
"""


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _html_table(table: Table) -> str:
    body = table.display.to_html(index=False, escape=True, border=0, na_rep="–")
    return (f'<h3 id="table-{html.escape(table.name)}">{inline_html(table.title)}</h3>\n{body}\n'
            f'<p class="caption">{inline_html(table.caption)} '
            f'<a href="tables/{table.name}.csv">CSV</a></p>')


def to_html(doc: Document) -> str:
    """The document as one self-contained HTML page (figures linked beside it)."""
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{inline_html(doc.title)}</h1>", f'<p class="sub">{inline_html(doc.subtitle)}</p>']
    if len(doc.sections) > 2:
        parts.append("<nav>" + "".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>'
                                       for s in doc.sections) + "</nav>")
    for section in doc.sections:
        parts.append(f'<h2 id="{_anchor(section.title)}">{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Para):
                parts.append(f"<p>{inline_html(block.text)}</p>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, TableBlock):
                parts.append(_html_table(block.table))
            elif isinstance(block, FigureBlock):
                f = block.figure
                fid = html.escape(f.file.rsplit("/", 1)[-1].rsplit(".", 1)[0])
                parts.append(f'<figure id="figure-{fid}"><img src="{html.escape(f.file)}" alt="{html.escape(f.title)}">'
                             f"<figcaption><strong>{inline_html(f.title)}.</strong> {inline_html(f.caption)}"
                             f"</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame's text (pipes escaped, newlines flattened)."""
    def cell(v: object) -> str:
        text = "–" if v is None or (isinstance(v, float) and v != v) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _md_links(text: str) -> str:
    """Links to a figure's anchor point at its PNG in Markdown (no anchors there)."""
    return re.sub(r"\(#figure-([A-Za-z0-9_-]+)\)", r"(figures/\1.png)", text)


def to_markdown(doc: Document) -> str:
    """The document as Markdown, with the same content as the HTML."""
    parts = [f"# {doc.title}", "", f"_{doc.subtitle}_", ""]
    for section in doc.sections:
        parts += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Para):
                parts += [_md_links(block.text), ""]
            elif isinstance(block, Bullets):
                parts += [f"- {_md_links(i)}" for i in block.items] + [""]
            elif isinstance(block, TableBlock):
                t = block.table
                parts += [f"### {t.title}", "", markdown_table(t.display), "",
                          f"{t.caption} [CSV](tables/{t.name}.csv)", ""]
            elif isinstance(block, FigureBlock):
                f = block.figure
                parts += [f"![{f.title}]({f.file})", "", f"*{f.title}.* {f.caption}", ""]
    return "\n".join(parts).rstrip() + "\n"
