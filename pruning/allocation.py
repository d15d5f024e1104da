"""Non-uniform layer sparsity: turn the global target into a per-block (or per-layer) target before the
solvers run (``allocation=uniform|owl|profile``; docs/allocation.md).

* ``uniform``: every prunable linear gets the global target (the reference repos).
* ``owl``: Outlier-Weighted Layerwise sparsity (Yin et al., arXiv 2310.05175; reference luuyin/OWL
  ``lib/prune_all.py``). A first pass through the *dense* model computes, per block, the Wanda score
  ``|W_ij| · ‖X_j‖`` of all its prunable linears and the block's outlier ratio ``D_i`` = share of scores
  above ``M ×`` their mean (in %). The ratios are mapped linearly to a range of width ``2λ``:
  ``r_i = (D_i − min D) / (max D − min D) · 2λ``, density ``1 − s + r_i − mean(r)``, so blocks with more
  outliers keep more weights, and the mean block sparsity is ``s``. Deviation: the mean is weighted by
  each block's prunable parameters, so the parameter-weighted sparsity is exactly ``s`` also for
  models whose blocks differ in size (for equal blocks it is the reference's plain mean). The
  reference raises a block ratio ≤ 0 to 0.01; here a ratio outside [0, 1) is an error naming λ, as
  raising it would move the global mean.
* ``profile``: per-layer ratios from a YAML/JSON file: ``{"default": 0.5, "layers": {KEY: ratio}}``;
  ``KEY`` is a block index (``"3"``) or a regular expression matched (``re.fullmatch``) against the
  layer's full name (``model.layers.3.mlp.down_proj``); the first matching key in file order wins;
  layers matched by no key take ``default`` (an error when there is none). The ratios' mean weighted by
  layer size must be the global ``sparsity`` (within :data:`PROFILE_TOLERANCE`): a job is filed under its
  target, so a profile that prunes 30% under ``sparsity=0.5`` is an error, not a mislabelled row.

N:M patterns are uniform by definition: ``owl`` or ``profile`` with an N:M target is an error.
Pure functions here; the dense pass lives in :func:`pruning.block_pass.block_wanda_scores`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from pruning.block_pass import block_wanda_scores
from pruning.errors import ConfigError
from pruning.sparsity import Sparsity
from pruning.spec import EngineSpec

ALLOCATIONS = ("uniform", "owl", "profile")
PROFILE_TOLERANCE = 0.005  # a profile's size-weighted sparsity may differ this much from the global target


@dataclass
class Allocation:
    """Per-layer targets: ``target(block_index, layer_name)`` → :class:`Sparsity`, plus what the record states."""
    name: str
    target: Callable[[int, str], Sparsity]
    info: dict = field(default_factory=dict)


def uniform(sparsity: Sparsity) -> Allocation:
    return Allocation("uniform", lambda bi, name: sparsity, {"name": "uniform"})


# ----------------------------------------------------------------------------- OWL
def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Percentage of the scores (all linears of a block together) above ``m ×`` their mean."""
    flat = torch.cat([s.flatten().double() for s in scores])
    return float((flat > m * flat.mean()).sum()) / flat.numel() * 100.0


def owl_ratios(outliers: list[float], params: list[int], sparsity: float, lam: float) -> list[float]:
    """Block sparsities from the blocks' outlier ratios (module docstring); their parameter-weighted
    mean is ``sparsity``."""
    d = torch.tensor(outliers, dtype=torch.float64)
    p = torch.tensor(params, dtype=torch.float64)
    spread = float(d.max() - d.min())
    r = (d - d.min()) / spread * (2 * lam) if spread > 0 else torch.zeros_like(d)
    density = r - (r * p).sum() / p.sum() + (1 - sparsity)
    ratios = (1 - density).tolist()
    bad = [(i, x) for i, x in enumerate(ratios) if not 0.0 <= x < 1.0]
    if bad:
        i, x = bad[0]
        raise ConfigError(f"allocation=owl with lambda={lam} at sparsity {sparsity:g} gives block {i} a ratio of "
                          f"{x:.4f}, outside [0, 1); lower allocation.lambda (the block ratios span 2·lambda)")
    return ratios


def owl(sparsity: Sparsity, outliers: list[float], params: list[int], m: float, lam: float) -> Allocation:
    ratios = owl_ratios(outliers, params, sparsity.ratio, lam)
    blocks = [Sparsity("unstructured", r) for r in ratios]
    return Allocation("owl", lambda bi, name: blocks[bi],
                      {"name": "owl", "M": m, "lambda": lam, "score": "wanda |W|·‖X‖ on the dense model",
                       "outlier_ratios": outliers, "block_targets": ratios})


# ----------------------------------------------------------------------------- profiles
def load_profile(path: str | Path) -> dict:
    """Read and check a profile file (before any model is loaded): ``{"default": r, "layers": {key: r}}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"allocation.path={str(path)!r}: no such profile file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"allocation.path={str(path)!r}: cannot parse the profile ({e})") from None
    if not isinstance(data, dict) or not set(data) <= {"default", "layers"} or not isinstance(data.get("layers", {}), dict):
        raise ConfigError(f"profile {path}: expected a mapping with keys 'default' (optional) and 'layers' "
                          f"({{block index or layer-name regex: ratio}}); got {str(data)[:200]!r}")
    layers = {str(k): v for k, v in (data.get("layers") or {}).items()}
    for key, ratio in [("default", data.get("default"))] * ("default" in data) + list(layers.items()):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(f"profile {path}: {key}: {ratio!r} is not a sparsity ratio in [0, 1)")
    for key in layers:
        if not key.isdigit():
            try:
                re.compile(key)
            except re.error as e:
                raise ConfigError(f"profile {path}: layer key {key!r} is neither a block index nor a valid "
                                  f"regular expression ({e})") from None
    if not layers and "default" not in data:
        raise ConfigError(f"profile {path}: neither 'default' nor any 'layers' entry")
    return {"default": data.get("default"), "layers": layers, "path": str(path)}


def profile(spec: dict, names: dict[int, dict[str, str]]) -> Allocation:
    """Resolve a checked profile against the model's layers (``names``: block index → {name in the block:
    full name}). Unknown keys (matching no layer) and uncovered layers without a default are errors."""
    targets: dict[str, float] = {}
    used = set()
    for bi, layer_names in names.items():
        for full in layer_names.values():
            for key, ratio in spec["layers"].items():
                if (key.isdigit() and int(key) == bi) or (not key.isdigit() and re.fullmatch(key, full)):
                    targets[full] = float(ratio)
                    used.add(key)
                    break
            else:
                if spec["default"] is None:
                    raise ConfigError(f"profile {spec['path']}: layer {full} matches no key and the profile has no "
                                      f"'default'")
                targets[full] = float(spec["default"])
    unknown = [k for k in spec["layers"] if k not in used]
    if unknown:
        example = next(iter(next(iter(names.values())).values()), "?")
        raise ConfigError(f"profile {spec['path']}: keys {unknown} match no prunable layer (blocks 0-{len(names) - 1}; "
                          f"names look like {example!r})")
    by_name = {n: Sparsity("dense" if r == 0 else "unstructured", r) for n, r in targets.items()}
    return Allocation("profile", lambda bi, name: by_name[names[bi][name]],
                      {"name": "profile", "path": spec["path"], "layer_targets": targets})


def weighted_mean(targets: dict[str, float], numels: dict[str, int]) -> float:
    total = sum(numels.values())
    return sum(targets[n] * numels[n] for n in numels) / total if total else 0.0


def check_config(cfg: dict, sparsity: Sparsity) -> dict | None:
    """Checks of ``allocation.*`` that need no model; returns the parsed profile for ``profile``."""
    name = cfg.get("name")
    if name not in ALLOCATIONS:
        raise ConfigError(f"allocation.name={name!r}; allowed: {', '.join(ALLOCATIONS)}")
    if name == "uniform":
        return None
    if sparsity.kind == "nm":
        raise ConfigError(f"allocation={name} with sparsity={sparsity}: N:M patterns are uniform by definition; "
                          f"use allocation=uniform, or an unstructured target with allocation={name}")
    if sparsity.kind == "dense":
        raise ConfigError(f"allocation={name} needs a pruning target; method=dense prunes nothing")
    if name == "owl":
        m, lam = cfg.get("M"), cfg.get("lambda")
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise ConfigError(f"allocation.M={m!r}: need a number > 0 (outliers are scores above M × the mean)")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < 0.5:
            raise ConfigError(f"allocation.lambda={lam!r}: need a number in [0, 0.5) (block ratios span 2·lambda)")
        return None
    if not cfg.get("path"):
        raise ConfigError("allocation=profile needs allocation.path=FILE (YAML or JSON: default + layers)")
    return load_profile(cfg["path"])


def allocate(cfg: dict, profile_spec: dict | None, sparsity: Sparsity, model, adapter, windows,
             engine: EngineSpec | None = None, store=None) -> Allocation:
    """The allocation of a job, from its checked config (:func:`check_config`) and the loaded model; OWL's
    dense pass runs where and in the batches ``engine`` says."""
    engine = engine or EngineSpec()
    if cfg["name"] == "uniform":
        return uniform(sparsity)
    blocks = adapter.blocks(model)
    layers = {bi: {n: f"{adapter.blocks_path}.{bi}.{n}" for n in adapter.prunable(b)} for bi, b in enumerate(blocks)}
    numels = {f"{adapter.blocks_path}.{bi}.{n}": m.weight.numel()
              for bi, b in enumerate(blocks) for n, m in adapter.prunable(b).items()}
    if cfg["name"] == "owl":
        outliers = block_wanda_scores(model, adapter, windows, lambda bi, scores: outlier_ratio(list(scores.values()), cfg["M"]),
                                      device=engine.device, batch_size=engine.batch_size, store=store)
        params = [sum(numels[f] for f in layers[bi].values()) for bi in layers]
        alloc = owl(sparsity, outliers, params, cfg["M"], cfg["lambda"])
    else:
        alloc = profile(profile_spec, layers)
    targets = {full: alloc.target(bi, n).ratio for bi, names in layers.items() for n, full in names.items()}
    alloc.info["weighted_target"] = weighted_mean(targets, numels)
    if abs(alloc.info["weighted_target"] - sparsity.ratio) > PROFILE_TOLERANCE:  # OWL is exact by construction
        raise ConfigError(
            f"allocation=profile: {profile_spec['path']} prunes {alloc.info['weighted_target']:.4f} of this model's "
            f"prunable weights (weighted by layer size), but sparsity={sparsity}; the record and every table would "
            f"file it under the wrong target. Set sparsity={alloc.info['weighted_target']:.4g}, or change the "
            f"profile's ratios (allowed difference: {PROFILE_TOLERANCE})")
    alloc.info.setdefault("layer_targets", targets)
    return alloc
