"""Where a solver's layer-error gain comes from: the layer error per projection (q_proj, o_proj,
down_proj, …) of each method, paired with a baseline's on the same calibration windows.

    python -m analysis.tables DIR… --table projections [--baseline sparsegpt] [--format md|latex|csv]

Per (model, sparsity, projection, method): the layer error ‖(W−W')X‖²/‖WX‖² averaged over the blocks
(and, where records have them, the held-out layer error on windows the solver never fitted,
``calibration.heldout_nsamples``, and the error against the dense model's own layer output,
‖W X_d − W'X‖²/‖W X_d‖², ``engine.dense_error`` or a dense-target method), and its ratio to the
baseline's average for the same projection, model, sparsity and calibration seed, averaged over seeds.
A method whose mean layer error is lower but whose perplexity is not shows here which projections carry
the difference.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.frontier import latex_table, matched
from analysis.names import METHOD_NAMES, method_key, sparsity_name, sparsity_order, to_markdown

KEYS = ["model", "sparsity", "calib_seed", "layer"]
ERRORS = [("rel_error", "layer error"), ("heldout_rel_error", "held-out layer error"),
          ("dense_rel_error", "dense-output error")]  # the last two only where records have them


def projections_long(layers: pd.DataFrame, baseline: str = "sparsegpt") -> pd.DataFrame:
    """One row per (model, sparsity, projection, method): seeds, mean error(s) and ratio(s) to ``baseline``."""
    if layers is None or layers.empty:
        raise ValueError("no per-layer rows in these records")
    f = layers[layers.sparsity != "dense"].copy()
    if not (f.label == baseline).any():
        raise ValueError(f"no records of the baseline {baseline!r}; methods here: {', '.join(sorted(f.label.unique()))}")
    errors = [(col, name) for col, name in ERRORS if col in f and pd.to_numeric(f[col], errors="coerce").notna().any()]
    for col, _ in errors:
        f[col] = pd.to_numeric(f[col], errors="coerce")
    # mean over the blocks of one record, per projection
    per_record = f.groupby(KEYS + ["label", "path"], sort=False, dropna=False)[[c for c, _ in errors]].mean().reset_index()
    if per_record.duplicated(KEYS + ["label"]).any():
        raise ValueError("several records of one method for one (model, sparsity, calibration seed): "
                         "use --label-params to tell them apart")
    base = per_record[per_record.label == baseline].set_index(KEYS)
    for col, _ in errors:
        per_record[f"{col}_x"] = per_record[col].to_numpy() / matched(per_record, base, KEYS, col)
    rows = []
    for (model, sparsity, layer, label), g in per_record.groupby(["model", "sparsity", "layer", "label"], sort=False):
        row = {"model": model, "sparsity": sparsity, "projection": layer, "label": label,
               "seeds": ",".join(str(int(s)) for s in sorted(g["calib_seed"].dropna()))}
        for col, _ in errors:
            row.update({col: g[col].mean(), f"{col}_x": g[f"{col}_x"].mean()})
        rows.append(row)
    long = pd.DataFrame(rows)
    forward = {p: i for i, p in enumerate(dict.fromkeys(f["layer"]))}  # the records' (forward) order of projections
    long["_k"] = [(str(m), sparsity_order(s), forward[p], method_key(lab)) for m, s, p, lab in
                  zip(long["model"], long["sparsity"], long["projection"], long["label"])]
    return long.sort_values("_k").drop(columns="_k").reset_index(drop=True)


def projections_display(layers: pd.DataFrame, baseline: str = "sparsegpt") -> pd.DataFrame:
    long = projections_long(layers, baseline)
    base = METHOD_NAMES.get(baseline, baseline)
    out = {"model": long["model"], "sparsity": long["sparsity"].map(sparsity_name), "projection": long["projection"],
           "method": long["label"].map(lambda m: METHOD_NAMES.get(m, m)), "seeds": long["seeds"]}
    for col, name in ERRORS:
        if col in long:
            out[name] = long[col].map(lambda v: "–" if math.isnan(v) else f"{v:.4f}")
            out[f"{name} ÷ {base}"] = long[f"{col}_x"].map(lambda v: "–" if math.isnan(v) else f"{v:.3f}")
    return pd.DataFrame(out)


CAPTION = ("Layer error ‖(W−W')X‖²/‖WX‖² per projection (and, where records have it, the dense-output error "
           "‖W X_d − W'X‖²/‖W X_d‖²), averaged over the model's blocks; ÷ {base}: the ratio to {base}'s average "
           "for the same projection on the same calibration windows, averaged over seeds.")


def projections_markdown(layers: pd.DataFrame, baseline: str = "sparsegpt") -> str:
    base = METHOD_NAMES.get(baseline, baseline)
    return CAPTION.format(base=base) + "\n\n" + to_markdown(projections_display(layers, baseline))


def projections_latex(layers: pd.DataFrame, baseline: str = "sparsegpt") -> str:
    return latex_table(projections_display(layers, baseline), CAPTION.format(base=METHOD_NAMES.get(baseline, baseline)))
