"""A study's per-arm table as the report prints it and as files (csv, markdown, LaTeX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..results import atomic_write_bytes
from .regime import select_runs


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table (numbers to 4 significant digits) without the optional `tabulate` dependency."""
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_table(table: pd.DataFrame, out: Path) -> None:
    """`out`.csv, `out`.md and `out`.tex."""
    atomic_write_bytes(out.with_suffix(".csv"), table.to_csv(index=False).encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown_table(table).encode())
    atomic_write_bytes(out.with_suffix(".tex"), table.to_latex(index=False, float_format="%.4g").encode())


def mark_references(table: pd.DataFrame, study) -> pd.DataFrame:
    """A `reference` column naming the bar of the rows that are a reference's runs (empty for the others)."""
    if table.empty or not getattr(study, "reference", ()):
        return table
    table = table.copy()
    table["reference"] = ""
    for ref in study.reference:
        hit = select_runs(table, ref.runs).index
        table.loc[hit, "reference"] = f"bar {ref.bar:.0%} at {ref.nfe}-NFE {ref.sampler}"
    return table
