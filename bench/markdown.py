"""BENCHMARKS.md is shared by several benchmarks: each owns one `## ` section and rewrites only that one."""

from __future__ import annotations

import os
from pathlib import Path

TITLE = "# lowbit benchmarks\n\n"


def replace_section(markdown: str, heading: str, body: str) -> str:
    """`markdown` with the section under `heading` (up to the next `## ` heading) replaced by `heading + body`;
    appended at the end when absent."""
    new = heading + ("\n\n" + body.rstrip("\n") if body.strip() else "") + "\n"
    lines = markdown.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip() == heading]
    if not starts:
        sep = "" if not markdown or markdown.endswith("\n\n") else ("\n" if markdown.endswith("\n") else "\n\n")
        return markdown + sep + new
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + new + ("\n" + tail if tail else "")


def write_section(path: Path, heading: str, body: str) -> None:
    """Rewrite one section of the file at `path` atomically (re-reading it just before, as others write too)."""
    current = path.read_text() if path.exists() else TITLE
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(replace_section(current, heading, body))
    tmp.replace(path)


def split_heading(text: str) -> tuple[str, str]:
    """('## Heading', body) of a section text that starts with its own heading line."""
    heading, _, body = text.partition("\n")
    return heading.rstrip(), body.lstrip("\n")


def write_section_text(path: Path, text: str) -> None:
    """write_section for a section text that starts with its heading line."""
    write_section(path, *split_heading(text))
