"""Uniform vs non-uniform layer sparsity (OWL, profiles), solver by solver.

    python -m analysis.tables DIR… --table allocation [--format md|latex|csv]

Every record with a non-uniform allocation is paired with the uniform record of the same model,
sparsity, method (label) and calibration seed, so the ratio compares allocations on the *same*
calibration windows. Per (model, sparsity, method, allocation) the table gives the seeds, perplexity
mean ± std over seeds on each evaluated dataset, the mean of the per-seed ratios to uniform, and the
solver seconds. Only (model, sparsity, method) cells where some record used a non-uniform allocation
appear (a method never run with OWL at that sparsity has nothing to compare).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.frontier import evaluated_datasets, exploded_caption, latex_table, matched, plus_minus
from analysis.names import DATASET_NAMES, METHOD_NAMES, fmt_ppl, method_key, sparsity_name, sparsity_order, to_markdown

KEYS = ["model", "sparsity", "base", "calib_seed"]


def allocation_long(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, sparsity, method, allocation): the statistics of the module docstring."""
    if frame.empty:
        raise ValueError("no complete records")
    f = frame[frame.sparsity != "dense"].drop_duplicates("config_hash").copy()  # one config twice: one result
    if "allocation_params" not in f:
        f["allocation_params"] = ""
    f["base"] = [lab[: -len(alloc) - 1] if alloc != "uniform" and lab.endswith(f"+{alloc}") else lab
                 for lab, alloc in zip(f["label"], f["allocation"])]
    other = f[f.allocation != "uniform"]
    cells = set(zip(other["model"], other["sparsity"], other["base"]))
    if not cells:
        raise ValueError("no records with a non-uniform allocation (allocation=owl or profile)")
    f = f[[cell in cells for cell in zip(f["model"], f["sparsity"], f["base"])]]
    datasets = evaluated_datasets(f)
    uniform = f[f.allocation == "uniform"].set_index(KEYS)
    if uniform.index.has_duplicates:
        raise ValueError("several uniform records for one (model, sparsity, method, calibration seed): "
                         "pass one configuration per cell")
    for ds in datasets:
        f[f"ratio_{ds}"] = f[f"ppl_{ds}"].to_numpy() / matched(f, uniform, KEYS, f"ppl_{ds}")
    rows = []
    groups = f.groupby(["model", "sparsity", "base", "allocation", "allocation_params"], sort=False)
    for (model, sparsity, base, alloc, knobs), g in groups:
        if g["calib_seed"].duplicated().any():
            raise ValueError(f"{model} {sparsity} {base} ({alloc} {knobs}): several records for one calibration "
                             "seed; pass one configuration per cell")
        row = {"model": model, "sparsity": sparsity, "method": base, "allocation": alloc, "knobs": knobs,
               "seeds": ",".join(str(int(s)) for s in sorted(g["calib_seed"].dropna()))}
        for ds in datasets:
            v = g[f"ppl_{ds}"]
            row.update({f"ppl_{ds}": v.mean(), f"ppl_{ds}_std": v.std(ddof=1) if len(v) > 1 else math.nan,
                        f"ratio_{ds}": g[f"ratio_{ds}"].mean()})
        row["solver_s"] = g["solver_s"].mean()
        rows.append(row)
    long = pd.DataFrame(rows)
    long["_k"] = [(str(m), sparsity_order(s), method_key(b), a != "uniform", a, k) for m, s, b, a, k in
                  zip(long["model"], long["sparsity"], long["method"], long["allocation"], long["knobs"])]
    return long.sort_values("_k").drop(columns="_k").reset_index(drop=True)


def allocation_display(frame: pd.DataFrame, explode: float = 1e4) -> pd.DataFrame:
    long = allocation_long(frame)
    datasets = [c[4:] for c in long.columns if c.startswith("ppl_") and not c.endswith("_std")]
    out = {"model": long["model"], "sparsity": long["sparsity"].map(sparsity_name),
           "method": long["method"].map(lambda m: METHOD_NAMES.get(m, m)),
           "allocation": [a if not k else f"{a} ({k.replace(',', ', ')})" for a, k in zip(long["allocation"],
                                                                                    long["knobs"])],
           "seeds": long["seeds"]}
    for ds in datasets:
        name = DATASET_NAMES.get(ds, ds)
        out[f"{name} ppl"] = [plus_minus(m, s, lambda v: fmt_ppl(v, explode)) for m, s in
                              zip(long[f"ppl_{ds}"], long[f"ppl_{ds}_std"])]
        out[f"{name} ÷ uniform"] = [("–" if a == "uniform" or math.isnan(r) else f"{r:.2f}")
                                    for a, r in zip(long["allocation"], long[f"ratio_{ds}"])]
    out["solver s"] = long["solver_s"].map(lambda v: "–" if v is None or math.isnan(v) else f"{v:.1f}")
    return pd.DataFrame(out)


CAPTION = ("Perplexity mean ± std over calibration seeds (seeds listed); \"÷ uniform\": the mean of the per-seed "
           "ratios to the same method's uniform record on the same calibration windows; solver seconds exclude "
           "forward passes and the allocation's own scoring pass.")


def allocation_markdown(frame: pd.DataFrame, explode: float = 1e4) -> str:
    shown = allocation_display(frame, explode)
    return CAPTION + exploded_caption(shown, explode) + "\n\n" + to_markdown(shown)


def allocation_latex(frame: pd.DataFrame, explode: float = 1e4) -> str:
    shown = allocation_display(frame, explode)
    return latex_table(shown, CAPTION + exploded_caption(shown, explode))
