"""Selecting and labelling the rows of a collected frame (``--where``, ``--label-params``)."""

from __future__ import annotations

import math

import pandas as pd


def label_by_params(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Ablations: append ``(key=value, …)`` to a method's label for each of ``keys`` (method
    parameters) whose value varies among that method's rows, so e.g. two APT settings get two rows
    and SparseGPT, whose parameters do not vary, keeps its label (the baseline of the ratios)."""
    frame = frame.copy()
    unknown = [k for k in keys if f"param_{k}" not in frame.columns]
    if unknown:
        known = sorted(c[len("param_"):] for c in frame.columns if c.startswith("param_"))
        raise ValueError(f"--label-params {','.join(unknown)}: no such method parameter in these records; "
                         f"known: {', '.join(known)}")
    for label, rows in frame.groupby("label"):
        # as text, an absent parameter included: pandas 3's astype(str) keeps NaN missing, and a knob set in
        # some records and absent in older ones (where the method's default applied) is a variation too
        varying = [k for k in keys if rows[f"param_{k}"].map(_param_text).nunique() > 1]
        if varying:
            suffixes = [", ".join(f"{k}={_param_text(r['param_' + k])}" for k in varying) for _, r in rows.iterrows()]
            frame.loc[rows.index, "label"] = [f"{label} ({s})" for s in suffixes]
    return frame


def select_rows(frame: pd.DataFrame, conditions: list[str]) -> pd.DataFrame:
    """The records matching every ``COLUMN=V1[,V2…]`` condition (values compared as the config wrote
    them: ``calib_seed=0`` matches ``0.0``; the dense record's sparsity is ``dense``)."""
    for cond in conditions:
        column, sep, values = cond.partition("=")
        column = column.strip()
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        if not sep or not column or not wanted:
            raise ValueError(f"--where {cond!r}: give COLUMN=VALUE[,VALUE...], e.g. allocation=uniform")
        if column not in frame.columns:
            known = ", ".join(c for c in frame.columns if not c.startswith(("ppl_", "zs_", "v_")))
            raise ValueError(f"--where {cond!r}: no column {column!r} in these records; known: {known}")
        frame = frame[frame[column].map(_param_text).isin(wanted)]
        if frame.empty:
            raise ValueError(f"--where {cond!r}: no record left (values of {column!r} are compared as text)")
    return frame


def _param_text(value) -> str:
    """A parameter as the config wrote it: pandas turns an integer column with gaps (methods that lack
    the parameter) into floats, so ``3.0`` is shown as ``3``; an absent one (the record's config lacks
    the knob) is ``–``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
