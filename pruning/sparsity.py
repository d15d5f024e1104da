"""Sparsity targets: one place that parses ``sparsity`` values.

``0.5`` (or ``"0.5"``, ``"50%"``) means unstructured sparsity: that fraction of the weights of
every prunable linear is zero. ``"N:M"`` means semi-structured sparsity: in each group of M
consecutive weights along the *input* dimension of a row, N are zero (``"2:4"`` prunes 2 of 4,
the NVIDIA convention; the SparseGPT and Wanda code call the same thing ``prune_n:prune_m``).

Hydra reads ``sparsity=0.5,2:4`` as a float and a string, so the value stays a plain config entry
and is parsed here (docs/evaluation.md, "Hydra").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pruning.errors import ConfigError

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Sparsity:
    kind: str  # "dense" | "unstructured" | "nm"
    ratio: float  # fraction of weights that are zero (N/M for "nm")
    n: int | None = None
    m: int | None = None

    @property
    def tag(self) -> str:
        """A file-system-safe name: ``s0.5``, ``2of4``, ``dense``."""
        if self.kind == "nm":
            return f"{self.n}of{self.m}"
        if self.kind == "dense":
            return "dense"
        return f"s{self.ratio:g}"

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else f"{self.ratio:g}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "ratio": self.ratio, "n": self.n, "m": self.m, "spec": str(self)}

    def check_width(self, in_features: int, name: str = "layer") -> None:
        """N:M needs M to divide the input width of every pruned layer."""
        if self.kind == "nm" and in_features % self.m:
            raise ConfigError(
                f"sparsity {self}: M={self.m} does not divide the input width {in_features} of {name}; "
                f"choose an M that divides {in_features} or use unstructured sparsity"
            )


def parse_sparsity(value) -> Sparsity:
    """Parse a config value into a :class:`Sparsity`; raises :class:`ConfigError` with the allowed forms."""
    allowed = "allowed: a ratio 0 <= s < 1 (e.g. 0.5 or '50%'), or 'N:M' with 0 < N < M (e.g. '2:4', '4:8')"
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"sparsity={value!r} is not a sparsity target; {allowed}")
    if isinstance(value, (int, float)):
        ratio = float(value)
    elif isinstance(value, str):
        text = value.strip()
        m = _NM.match(text)
        if m:
            n, mm = int(m.group(1)), int(m.group(2))
            if not 0 < n < mm:
                raise ConfigError(f"sparsity={value!r}: need 0 < N < M in 'N:M'; {allowed}")
            return Sparsity("nm", n / mm, n, mm)
        try:
            ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ConfigError(f"sparsity={value!r} cannot be parsed; {allowed}") from None
    else:
        raise ConfigError(f"sparsity={value!r} has type {type(value).__name__}; {allowed}")
    if not 0.0 <= ratio < 1.0 or ratio != ratio:
        raise ConfigError(f"sparsity={value!r} is outside [0, 1); {allowed}")
    return Sparsity("dense" if ratio == 0 else "unstructured", ratio)


def nm_violations(weight, n: int, m: int) -> int:
    """Number of (row, group of M inputs) with fewer than N zeros; 0 means a valid N:M pattern."""
    rows, cols = weight.shape
    if cols % m:
        raise ConfigError(f"N:M check: M={m} does not divide the input width {cols}")
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(-1)
    return int((zeros < n).sum())


def measure_sparsity(linears: dict) -> dict:
    """Fraction of exactly-zero weights over the given linears (Wanda's reported sparsity: the
    decoder blocks' linears, LM head and embeddings excluded)."""
    zeros = total = 0
    for module in linears.values():
        w = module.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return {"actual": zeros / total if total else 0.0, "zeros": zeros, "total": total, "n_linears": len(linears)}
