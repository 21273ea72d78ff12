"""TAS results as tables: the long frame `task_affinity` returns, its matrix form, its settings line."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def long_frame(names: list[str], values: np.ndarray, method: str) -> pd.DataFrame:
    """values: (batches, n, n) -> one row per (source, target) with mean, std (ddof 1), n."""
    rows = []
    for i, src in enumerate(names):
        for j, tgt in enumerate(names):
            v = values[:, i, j]
            rows.append({"source": src, "target": tgt, "method": method, "mean": float(v.mean()),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": len(v)})
    return pd.DataFrame(rows)


def affinity_matrix(frame: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """The long TAS frame as a matrix: rows = source task (the one stepped on), columns = target task."""
    order = list(dict.fromkeys(frame["source"]))
    matrix = frame.pivot_table(index="source", columns="target", values=value, aggfunc="mean")
    return matrix.reindex(index=order, columns=[c for c in order if c in matrix.columns])


def describe(frame: pd.DataFrame) -> str:
    """One line of the settings a TAS frame was measured with."""
    return ", ".join(f"{k}={v}" for k, v in frame.attrs.items())
