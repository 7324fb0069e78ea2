"""Go's text/tabwriter alignment, which kubectl's tables and describe output use.

Cells end with a tab; the text after a line's last tab is not aligned. A column
block is a run of consecutive lines that have a cell in that column; every
cell of a block is padded to the block's widest cell plus `padding`. So
`Name:\\tx` lines align with each other but not across an untabbed line, just
as `kubectl describe` prints them.
"""

from __future__ import annotations

# kubectl get: tabwriter.NewWriter(out, 6, 4, 3, ' ', 0); kubectl describe: (out, 0, 8, 2, ' ', 0).
TABLE_MIN_WIDTH, TABLE_PADDING = 6, 3
DESCRIBE_MIN_WIDTH, DESCRIBE_PADDING = 0, 2


def column_widths(
    rows: list[list[str]], *, min_width: int = TABLE_MIN_WIDTH, padding: int = TABLE_PADDING
) -> list[int]:
    """Widths of all but the last column of rows that form one block (a table)."""
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            width = max(len(cell) + padding, min_width)
            if i == len(widths):
                widths.append(width)
            elif width > widths[i]:
                widths[i] = width
    return widths


def pad_row(row: list[str], widths: list[int]) -> str:
    """One row with the given column widths (a cell wider than its column pushes the rest)."""
    parts = []
    for i, cell in enumerate(row[:-1]):
        width = widths[i] if i < len(widths) else len(cell) + TABLE_PADDING
        parts.append(cell.ljust(width))
    if row:
        parts.append(row[-1])
    return "".join(parts).rstrip()


def format_table(rows: list[list[str]], *, min_width: int = TABLE_MIN_WIDTH, padding: int = TABLE_PADDING) -> str:
    """Rows of cells as aligned text, one line each (no trailing newline)."""
    widths = column_widths(rows, min_width=min_width, padding=padding)
    return "\n".join(pad_row(row, widths) for row in rows)


def tabwrite(text: str, *, min_width: int = DESCRIBE_MIN_WIDTH, padding: int = DESCRIBE_PADDING) -> str:
    """Aligns tab-separated text the way Go's tabwriter does."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    widths: list[int] = []

    def write_lines(start: int, end: int) -> None:
        for line in lines[start:end]:
            parts = []
            for j, cell in enumerate(line):
                if j < len(line) - 1 and j < len(widths):
                    parts.append(cell.ljust(widths[j]))
                else:
                    parts.append(cell)
            out.append("".join(parts).rstrip())

    def format_block(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            # A cell in this column starts a block: print the lines before it.
            write_lines(line0, this)
            line0 = this
            width = min_width
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            format_block(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    format_block(0, len(lines))
    return "\n".join(out)
