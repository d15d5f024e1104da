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

A distributed prune (``runtime.distributed``) keeps one store and one progress per rank. Each save keeps the
previous one (``progress.prev.pt``) and every rank commits its staged block only after all ranks have saved
their progress (a barrier between), so after a kill the ranks' progress differs by at most one block and the
one ahead has not committed it: at resume they agree on the least next block, and a rank ahead goes back to
its previous progress (:func:`agree`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pruning.offload import PROGRESS_FILE, PROGRESS_PREV

log = logging.getLogger(__name__)


class Progress:
    """The progress file of a store, for one config (``key``: the job's config hash)."""

    def __init__(self, root: str | Path, key: str):
        self.path, self.key = Path(root) / PROGRESS_FILE, key
        self.prev = Path(root) / PROGRESS_PREV

    def exists(self) -> bool:
        return self.path.exists() or self.prev.exists()

    def _read(self, path: Path) -> dict | None:
        if not path.exists():
            return None
        try:
            state = torch.load(path, weights_only=True)
        except Exception as e:  # a torn or foreign file: start over
            log.warning("resume: %s is unreadable (%s); starting over", path, e)
            return None
        return state if state.get("key") == self.key else None

    def load(self) -> dict | None:
        """The saved state of this config, or None (no file, another config's, unreadable); a kill between the
        two renames of :meth:`save` leaves only the previous one, which is then the state."""
        return self._read(self.path if self.path.exists() else self.prev)

    def previous(self) -> dict | None:
        """The state saved before the last one (:func:`agree`)."""
        return self._read(self.prev) if self.path.exists() else None

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "key": self.key}, tmp)
        if self.path.exists():
            self.path.replace(self.prev)
        tmp.replace(self.path)

    def discard(self, why: str) -> None:
        """Remove the progress: without it the loader clears the store's blocks (another run's partly pruned
        model) instead of keeping them (:func:`pruning.offload.resuming`)."""
        log.warning("resume: %s; discarding %s (the store's blocks go with it at load)", why, self.path)
        self.done()

    def done(self) -> None:
        self.path.unlink(missing_ok=True)
        self.prev.unlink(missing_ok=True)


def agree(progress: Progress, comm) -> dict | None:
    """The state this rank resumes from: every rank's saved next block gathered, the least of them taken (a rank
    one block ahead goes back to its previous state, whose block it has not committed). Ranks further apart
    (a store removed or replaced on one of them) cannot be reconciled: an error says so."""
    state = progress.load()
    if not comm.active:
        return state
    nexts = comm.gather_objects(state["next_block"] if state else 0)
    target = min(nexts)
    if state is None or state["next_block"] == target:
        return state
    back = progress.previous() if target > 0 else None
    if state["next_block"] - target > 1 or (target > 0 and (back is None or back["next_block"] != target)):
        raise RuntimeError(f"resume: this rank's progress is at block {state['next_block']} and it has no saved "
                           f"state at block {target}, where rank {nexts.index(target)} stopped; remove every rank's "
                           "store (runtime.offload_dir/rank*) to start over")
    log.info("resume: going back to block %d, where rank %d stopped", target, nexts.index(target))
    return back
