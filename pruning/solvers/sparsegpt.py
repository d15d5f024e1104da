"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774), as IST-DASLab/sparsegpt ``fasterprune``.

Per layer: dead inputs (``H_jj = 0``) get ``H_jj = 1`` and a zero weight column; damping
``percdamp · mean(diag H)``; ``Hinv`` = upper Cholesky factor of ``H⁻¹``. Columns are processed
in blocks of ``blocksize``; inside a block each column gets an OBS error-feedback step on the
columns to its right, and after the block a lazy update is applied to all later columns.

* Unstructured mask: per block, score ``w² / diag(Hinv)²`` over the whole rows × block,
  ``thresh = sort(score)[int(numel · s)]``, prune ``score <= thresh`` (uniform per block, chosen
  adaptively on the already-updated weights).
* N:M mask: at every column ``i`` with ``i % M == 0``, the N lowest scores per row among the next
  M columns of the current (updated) weights; ``blocksize`` must be a multiple of M.

Deviation from the reference, on purpose: a failed Cholesky does not crash. The damping is raised
tenfold (up to ``max_damp_tries`` times); if it still fails, ``Hinv`` falls back to the identity
(llm-compressor's choice), which reduces the update to magnitude pruning for that layer. Both are
reported in ``info``.
"""

from __future__ import annotations

import torch

from pruning.errors import ConfigError
from pruning.solvers.common import SolverResult, check_pattern, prepare_layer, relative_error, sorted_value, undamped
from pruning.sparsity import Sparsity


def sparsegpt(w: torch.Tensor, sparsity: Sparsity, *, H: torch.Tensor, sq_norms: torch.Tensor | None = None,
              blocksize: int = 128, percdamp: float = 0.01, max_damp_tries: int = 6) -> SolverResult:
    check_pattern(w, sparsity)
    if blocksize < 1:
        raise ConfigError(f"method.blocksize={blocksize}: need >= 1")
    prunen, prunem = (sparsity.n, sparsity.m) if sparsity.kind == "nm" else (0, 0)
    if prunen and blocksize % prunem:
        raise ConfigError(f"method.blocksize={blocksize} must be a multiple of M={prunem} for {sparsity} sparsity")
    W0 = w.float()
    W, H, dead, Hinv, info = prepare_layer(W0, H, percdamp, max_damp_tries, torch.float32)
    rows, columns = W.shape

    full_mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = sorted_value(tmp, int(tmp.numel() * sparsity.ratio))
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w_col = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w_col.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w_col - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return SolverResult(W, full_mask, relative_error(W0, W, undamped(H, dead)), info)

