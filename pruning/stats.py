"""Running input statistics of one linear layer, accumulated exactly as the reference code does.

* ``H = (2/n) Σ x xᵀ`` over calibration *sequences* (SparseGPT's ``add_batch``), float32;
* ``sq_norms[j] = (1/n) Σ_seq ‖X_j‖²`` (Wanda's ``scaler_row``), float32.

Both are running averages where ``n`` counts sequences, so the order of batches does not matter
and the scale of H cancels in every solver (docs/methods.md (APT)).
"""

from __future__ import annotations

import math

import torch


class LayerStats:
    def __init__(self, columns: int, *, hessian: bool = True, norms: bool = True, device=None):
        self.nsamples = 0
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=device) if hessian else None
        self.sq_norms = torch.zeros(columns, dtype=torch.float32, device=device) if norms else None

    @torch.no_grad()
    def add_batch(self, inp: torch.Tensor, sequences: int = 1) -> None:
        """``inp``: the layer input, ``[batch, tokens, columns]``, or ``[sequences · tokens, columns]`` for
        models that flatten the batch before a linear (OPT's fc1/fc2): ``sequences`` then says how many
        calibration sequences it holds, so each counts once in the running mean."""
        if inp.dim() == 2:
            inp = inp.reshape(sequences, -1, inp.shape[-1])
        tmp = inp.shape[0]
        x = inp.reshape(-1, inp.shape[-1]).t().float()
        scale = self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        if self.H is not None:
            self.H *= scale
            xs = math.sqrt(2 / self.nsamples) * x
            self.H += xs @ xs.t()
        if self.sq_norms is not None:
            self.sq_norms *= scale
            self.sq_norms += torch.norm(x, p=2, dim=1) ** 2 / self.nsamples
