"""Fixed-pattern refits and mask local search shared by the reconstruction solvers (APT, ALPS).

Every function here works on all rows of a layer at once (no per-row Python loop) and on the
per-row masked least-squares problem of the layer-wise objective (docs/methods.md):

    min_w'  ½ (w' − w0) H (w' − w0)ᵀ    subject to  w'_Q = 0   (Q = the row's pruned set)

* :func:`refine_cg` — preconditioned conjugate gradients on the kept weights, from a starting point.
  CG minimises the quadratic over nested Krylov spaces, so the loss of every row never increases.
* :func:`swap_search` — exact local search on the mask: swap a pruned and a kept weight of a row
  (inside one N:M group for N:M, so the pattern holds) when a move with that support provably lowers
  the row's loss; the loss of every row is non-increasing and the per-row (per-group) counts are
  unchanged, so exact sparsity targets stay exact.
"""

from __future__ import annotations

import torch

from pruning.sparsity import Sparsity


def row_losses(W: torch.Tensor, W0: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``½ (w − w0) H (w − w0)ᵀ`` per row."""
    D = W - W0
    return 0.5 * ((D @ H) * D).sum(1)


def refine_cg(W: torch.Tensor, W0: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, iters: int,
              jacobi: bool = True) -> torch.Tensor:
    """``iters`` steps of conjugate gradients on every row's masked least-squares problem (module
    docstring), all rows at once, starting from ``W`` (its pruned entries are taken as zero). ``W`` is
    overwritten by the result, which is returned.

    ``jacobi``: precondition with ``1 / diag(H)`` (for a unit-diagonal ``H`` it is plain CG). One
    ``rows × cols × cols`` product per step; enough steps reach the exact per-row solution. The iterates are
    updated in place (the same arithmetic as the out-of-place form, bit for bit): six ``rows × cols`` matrices
    and one temporary live at a time."""
    keep = (~mask).to(W.dtype)
    X = W.mul_(keep)
    tiny = torch.finfo(H.dtype).tiny
    R = ((X - W0) @ H).neg_().mul_(keep)  # minus the gradient, on the kept weights only
    minv = 1.0 / torch.diagonal(H).clamp(min=tiny) if jacobi else torch.ones(H.shape[0], dtype=H.dtype, device=H.device)
    Z = R * minv
    P = Z.clone()
    rz = (R * Z).sum(1)
    for _ in range(iters):
        AP = torch.mm(P, H).mul_(keep)
        pap = (P * AP).sum(1)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), torch.zeros_like(rz))
        X += alpha.unsqueeze(1) * P
        R -= alpha.unsqueeze(1) * AP
        del AP
        torch.mul(R, minv, out=Z)
        rz_new = (R * Z).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=tiny), torch.zeros_like(rz))
        P.mul_(beta.unsqueeze(1)).add_(Z)  # Z + beta P
        rz = rz_new
    return X


def _swap_gain(W, G, Hdiag, H, k_idx, q_idx):
    """Exact loss change of the move "zero kept weight k, then re-set pruned weight q optimally":
    ``δ = −w_k e_k + t e_q`` with the best ``t`` gives
    ``Δ = ½ w_k² H_kk − w_k g_k − (g_q − w_k H_kq)² / (2 H_qq)`` (``g`` = the row's gradient).
    Index tensors ``k_idx``, ``q_idx`` broadcast to the same shape ``[rows, ...]``."""
    rows = torch.arange(W.shape[0], device=W.device).view(-1, *([1] * (k_idx.dim() - 1)))
    wk = W[rows, k_idx]
    gk, gq = G[rows, k_idx], G[rows, q_idx]
    hkq = H[k_idx, q_idx]
    t = (wk * hkq - gq) / Hdiag[q_idx]
    delta = 0.5 * wk ** 2 * Hdiag[k_idx] - wk * gk - 0.5 * (gq - wk * hkq) ** 2 / Hdiag[q_idx]
    return delta, t


def _nm_candidates(W, G, Hdiag, H, mask, sparsity: Sparsity):
    """Best swap per N:M group of each row: pairs (k kept, q pruned) of the same group."""
    rows, cols = W.shape
    m, n = sparsity.m, sparsity.n
    order = torch.argsort((~mask).view(rows, cols // m, m).to(torch.int8), dim=2, stable=True)  # pruned first
    base = torch.arange(0, cols, m, device=W.device).view(1, -1, 1)
    q_idx = (order[:, :, :n] + base).unsqueeze(3).expand(rows, cols // m, n, m - n)
    k_idx = (order[:, :, n:] + base).unsqueeze(2).expand(rows, cols // m, n, m - n)
    delta, t = _swap_gain(W, G, Hdiag, H, k_idx, q_idx)
    best = delta.flatten(2).argmin(2)  # [rows, groups]
    pick = lambda x: x.flatten(2).gather(2, best.unsqueeze(2)).squeeze(2)  # noqa: E731
    return pick(delta), pick(k_idx), pick(q_idx), pick(t)


def _unstructured_candidates(W, G, Hdiag, H, mask, width: int):
    """Swap candidates of each row: the ``width`` pruned weights with the largest single gain
    ``g_q² / H_qq`` against the ``width`` kept weights cheapest to remove; each pruned candidate is
    paired with its best kept partner."""
    neg = torch.finfo(W.dtype).max
    gain_q = torch.where(mask, G ** 2 / Hdiag, torch.full_like(W, -neg))
    cost_k = torch.where(mask, torch.full_like(W, neg), 0.5 * W ** 2 * Hdiag - W * G)
    width = min(width, int(mask.sum(1).min()), int((~mask).sum(1).min()))
    if width < 1:
        return None
    q_idx = torch.topk(gain_q, width, dim=1).indices  # [rows, width]
    k_idx = torch.topk(cost_k, width, dim=1, largest=False).indices
    delta, t = _swap_gain(W, G, Hdiag, H, k_idx.unsqueeze(1).expand(-1, width, width),
                          q_idx.unsqueeze(2).expand(-1, width, width))  # [rows, q, k]
    best_k = delta.argmin(2)
    pick = lambda x: x.gather(2, best_k.unsqueeze(2)).squeeze(2)  # noqa: E731
    return pick(delta), k_idx.gather(1, best_k), q_idx, pick(t)


def _cg_tracked(X, W0, H, mask, G, iters: int):
    """:func:`refine_cg` (Jacobi-preconditioned) that also keeps the full gradient ``G = (X − W0) H`` up to
    date, so losses and the next round's swap scores need no extra product."""
    keep = (~mask).to(X.dtype)
    tiny = torch.finfo(H.dtype).tiny
    minv = 1.0 / torch.diagonal(H).clamp(min=tiny)
    R = -G * keep
    Z = R * minv
    P = Z.clone()
    rz = (R * Z).sum(1)
    for _ in range(iters):
        HP = P @ H
        AP = HP * keep
        pap = (P * AP).sum(1)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), torch.zeros_like(rz)).unsqueeze(1)
        X += alpha * P
        G += alpha * HP
        R -= alpha * AP
        Z = R * minv
        rz_new = (R * Z).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=tiny), torch.zeros_like(rz))
        P = Z + beta.unsqueeze(1) * P
        rz = rz_new
    return X, G


def swap_search(W: torch.Tensor, W0: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, sparsity: Sparsity, *,
                rounds: int, swaps: int, cg_iters: int, width: int = 16, info: dict | None = None):
    """Local search on the mask, from the solution ``W`` on ``mask`` (returns the new ``W`` and mask).

    Each round, for every row: score the candidate swaps exactly (:func:`_swap_gain`), take up to
    ``swaps`` of the best improving ones with distinct weights (N:M: at most one per group), and apply
    their moves together if the exact loss change of the combined move, ``δ·g + ½ δ H δᵀ`` (the moves
    interact through ``H``), is negative; otherwise the row stays as it was. Then ``cg_iters`` CG steps
    refit the kept weights on the new masks. Rows never get worse and keep their counts. The gradient
    ``G = (W − W0) H`` is kept up to date by sparse updates, so a round costs ``cg_iters`` products.
    """
    info = {} if info is None else info
    W, mask = W.clone(), mask.clone()
    Hdiag = torch.diagonal(H).clamp(min=torch.finfo(H.dtype).tiny)
    G = (W - W0) @ H
    accepted = 0
    for _ in range(rounds):
        if sparsity.kind == "nm":
            delta, k_idx, q_idx, t = _nm_candidates(W, G, Hdiag, H, mask, sparsity)
        else:
            cand = _unstructured_candidates(W, G, Hdiag, H, mask, width)
            if cand is None:
                break
            delta, k_idx, q_idx, t = cand
            # distinct kept partners: a kept weight chosen by several pruned candidates goes to the best one
            order = torch.argsort(delta, dim=1)
            ks = k_idx.gather(1, order)
            dup = (ks.unsqueeze(2) == ks.unsqueeze(1)).tril(-1).any(2)
            first = torch.empty_like(dup).scatter_(1, order, ~dup)
            delta = torch.where(first, delta, torch.zeros_like(delta))
        top = torch.topk(delta, min(swaps, delta.shape[1]), dim=1, largest=False)
        use = top.values < 0
        if not bool(use.any()):
            break
        k_sel, q_sel, t_sel = (x.gather(1, top.indices) for x in (k_idx, q_idx, t))
        idx = torch.cat([k_sel, q_sel], 1)  # [rows, 2s]: distinct columns of each row
        vals = torch.cat([-W.gather(1, k_sel), t_sel], 1) * use.repeat(1, 2)
        Hs = H[idx.unsqueeze(2), idx.unsqueeze(1)]
        dloss = (vals * G.gather(1, idx)).sum(1) + 0.5 * torch.einsum("rs,rst,rt->r", vals, Hs, vals)
        better = dloss < 0
        vals = vals * better.unsqueeze(1)
        W.scatter_add_(1, idx, vals)  # k: w_k − w_k = 0; q: 0 + t
        G += torch.einsum("rs,rsc->rc", vals, H[idx])
        moved = use & better.unsqueeze(1)
        r = torch.arange(W.shape[0], device=W.device).unsqueeze(1).expand_as(k_sel)[moved]
        mask[r, k_sel[moved]] = True
        mask[r, q_sel[moved]] = False
        W[r, k_sel[moved]] = 0.0
        accepted += int(moved.sum())
        if cg_iters:
            W, G = _cg_tracked(W, W0, H, mask, G, cg_iters)
    info["swaps_accepted"] = info.get("swaps_accepted", 0) + accepted
    return W, mask
