"""One table, three renderings: plain text (terminal), Markdown, reStructuredText."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    #: Columns aligned right (numbers).
    right: frozenset[int] = frozenset()

    def _widths(self) -> list[int]:
        return [max(len(r[i]) for r in [self.headers, *self.rows]) for i in range(len(self.headers))]

    def _cells(self, row: list[str], widths: list[int]) -> list[str]:
        return [c.rjust(w) if i in self.right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]

    def text(self) -> str:
        widths = self._widths()
        lines = ["  ".join(self._cells(self.headers, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(self._cells(r, widths)).rstrip() for r in self.rows]
        return "\n".join(lines)

    def markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        rule = ["---:" if i in self.right else "---" for i in range(len(self.headers))]
        return "\n".join([line(self.headers), "|" + "|".join(rule) + "|", *(line(r) for r in self.rows)])

    def rst(self) -> str:
        """A simple table; an empty first cell would read as a continuation, so it gets a dash."""
        rows = [[r[0] or "-", *r[1:]] for r in self.rows]
        widths = [max(len(r[i]) for r in [self.headers, *rows]) for i in range(len(self.headers))]
        border = "  ".join("=" * w for w in widths)

        def line(cells: list[str]) -> str:
            return "  ".join(self._cells(cells, widths)).rstrip()

        return "\n".join([border, line(self.headers), border, *(line(r) for r in rows), border])
