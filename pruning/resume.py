"""Resume a killed prune from its last finished block (``runtime.offload=disk``).

With the blocks on disk, each pruned block is already written back to the store when the next one starts;
what a kill loses is what travels between blocks. After every block the engine saves it to
``progress.pt`` in the store (atomically): the calibration inputs of the next block (and the dense
stream's and the held-out windows' where they travel), the layers' report rows and the clocks, under the
job's config hash. The pruned block is written beside its file first and replaces it only once that
progress is saved (``BlockStore.stage`` / ``commit``), so a kill at any point leaves either the dense
block with progress before it or the pruned one with progress after it. A job re-run with the same
config over the same store (``runtime.offload_dir``, or the job directory's own store, which a failed job keeps while it holds progress) loads the model without
re-initialising or clearing the store and goes on from the next block: the same statistics, masks and
weights as an uninterrupted run (tested), the timings summed over the runs. Progress of another config,
or with a non-uniform allocation (its scores came from the dense model the store no longer holds), is
discarded, and the loader then clears the store's blocks: the job starts over.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pruning.offload import PROGRESS_FILE

log = logging.getLogger(__name__)


class Progress:
    """The progress file of a store, for one config (``key``: the job's config hash)."""

    def __init__(self, root: str | Path, key: str):
        self.path, self.key = Path(root) / PROGRESS_FILE, key

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict | None:
        """The saved state of this config, or None (no file, another config's, unreadable)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception as e:  # a torn or foreign file: start over
            log.warning("resume: %s is unreadable (%s); starting over", self.path, e)
            return None
        return state if state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "key": self.key}, tmp)
        tmp.replace(self.path)

    def discard(self, why: str) -> None:
        """Remove the progress: without it the loader clears the store's blocks (another run's partly pruned
        model) instead of keeping them (:func:`pruning.offload.resuming`)."""
        log.warning("resume: %s; discarding %s (the store's blocks go with it at load)", why, self.path)
        self.path.unlink(missing_ok=True)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)
