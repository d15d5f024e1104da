"""A table of numbers with the rules papers follow, rendered as Markdown, LaTeX (booktabs) or CSV.

* the best value of each column (lowest perplexity, highest accuracy) is bold, reference rows
  (dense, differences) excluded, ties all bold;
* values that exploded (NaN, or above ``explode``) are marked with ``†`` and never compete for best;
* a cell with no record reads ``–``; difference rows are signed; optional per-cell differences
  (e.g. to dense) are printed in parentheses.
CSV keeps the raw numbers (NaN as empty) for further processing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from pruning.results import write_text_atomic

EXPLODED = "†"
MISSING = "–"


def exploded_note(explode: float) -> str:
    """The note under (or in the caption of) a table whose values above ``explode`` are marked."""
    return f"{EXPLODED} exploded: NaN or above {explode:g}"


@dataclass
class Table:
    values: pd.DataFrame  # float cells; index: row labels, columns: column labels
    caption: str
    better: str = "lower"  # "lower" | "higher"
    digits: int = 2
    explode: float | None = None
    present: pd.DataFrame | None = None  # bool: the cell has a record (else it reads "–")
    deltas: pd.DataFrame | None = None  # optional per-cell differences, printed as " (+d)"
    marks: pd.DataFrame | None = None  # optional per-cell suffixes (e.g. significance marks, intervals)
    reference_rows: tuple = ()  # never bold (dense)
    signed_rows: tuple = ()  # difference rows: signed, never bold
    notes: list[str] = field(default_factory=list)
    row_header: str = "Method"

    def __post_init__(self):
        if self.better not in ("lower", "higher"):
            raise ValueError(f"better={self.better!r}; allowed: lower, higher")
        if self.present is None:
            self.present = self.values.notna()

    # ------------------------------------------------------------------ cell logic
    def exploded(self, v) -> bool:
        return v is None or math.isnan(v) or (self.explode is not None and v > self.explode)

    def best(self) -> pd.DataFrame:
        out = pd.DataFrame(False, index=self.values.index, columns=self.values.columns)
        skip = set(self.reference_rows) | set(self.signed_rows)
        for c in self.values.columns:
            cands = {r: float(self.values.at[r, c]) for r in self.values.index
                     if r not in skip and bool(self.present.at[r, c]) and not self.exploded(self.values.at[r, c])}
            if cands:
                target = (min if self.better == "lower" else max)(cands.values())
                for r, v in cands.items():
                    out.at[r, c] = v == target
        return out

    def text(self, r, c) -> str:
        if not bool(self.present.at[r, c]):
            return MISSING
        v = self.values.at[r, c]
        v = None if pd.isna(v) else float(v)
        if r in self.signed_rows:
            return MISSING if v is None else f"{v:+.{self.digits}f}"
        if self.exploded(v):
            return f"NaN{EXPLODED}" if v is None or math.isnan(v) else f"{v:.3g}{EXPLODED}"
        out = f"{v:.{self.digits}f}"
        if self.deltas is not None and r in self.deltas.index and c in self.deltas.columns \
                and pd.notna(self.deltas.at[r, c]) and r not in self.reference_rows:
            out += f" ({self.deltas.at[r, c]:+.{self.digits}f})"
        if self.marks is not None and r in self.marks.index and c in self.marks.columns \
                and isinstance(self.marks.at[r, c], str):
            out += self.marks.at[r, c]
        return out

    def _footer(self) -> list[str]:
        notes = list(self.notes)
        if self.explode is not None and any(self.exploded(self.values.at[r, c]) and bool(self.present.at[r, c])
                                            for r in self.values.index for c in self.values.columns
                                            if r not in self.signed_rows):
            notes.append(exploded_note(self.explode))
        return notes

    # ------------------------------------------------------------------ renderers
    def to_markdown(self) -> str:
        best = self.best()
        lines = [f"{self.caption}", "", "| " + " | ".join([self.row_header, *map(str, self.values.columns)]) + " |",
                 "|---|" + "---:|" * len(self.values.columns)]
        for r in self.values.index:
            cells = [f"**{self.text(r, c)}**" if best.at[r, c] else self.text(r, c) for c in self.values.columns]
            lines.append("| " + " | ".join([str(r), *cells]) + " |")
        notes = self._footer()
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    def to_latex(self) -> str:
        best = self.best()

        def esc(x) -> str:
            x = str(x)
            for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                         (EXPLODED, r"$^\dagger$"), (MISSING, "--"), ("−", "$-$"), ("×", r"$\times$")):
                x = x.replace(a, b)
            return x

        ncol = len(self.values.columns)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(self.caption)}}}",
                 r"\begin{tabular}{l" + "r" * ncol + "}", r"\toprule",
                 " & ".join(esc(x) for x in [self.row_header, *self.values.columns]) + r" \\", r"\midrule"]
        for r in self.values.index:
            if r in self.signed_rows and (r == self.signed_rows[0]):
                lines.append(r"\midrule")
            cells = [rf"\textbf{{{esc(self.text(r, c))}}}" if best.at[r, c] else esc(self.text(r, c))
                     for c in self.values.columns]
            lines.append(" & ".join([esc(r), *cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [rf"\par\footnotesize {esc(n)}" for n in self._footer()]
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        out = self.values.where(self.present)
        out.index.name = self.row_header
        return out.to_csv(float_format="%.6g")

    def render(self, fmt: str) -> str:
        renderers = {"md": self.to_markdown, "latex": self.to_latex, "csv": self.to_csv}
        if fmt not in renderers:
            raise ValueError(f"format={fmt!r}; allowed: {', '.join(renderers)}")
        return renderers[fmt]()


def emit(text: str, out: str | None) -> None:
    """A CLI's output: written atomically to ``out``, or printed."""
    if out:
        write_text_atomic(out, text)
    else:
        print(text, end="")
