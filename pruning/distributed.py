"""One job across several processes (``runtime.distributed=true``): torch.distributed under ``torchrun`` or a
SLURM job's tasks. :class:`Comm` is what the engine and the job see of it; :data:`LOCAL` is the one-process
case, where every method is a no-op, so the code paths of a plain job are the ones it always had.

What is split and how (docs/running.md, "One job across several processes"):

* **Calibration windows**: cut into ``world`` contiguous shards at batch boundaries (:func:`shard_bounds`);
  each rank runs only its shard's windows through each block, and its next-block inputs stay with it.
* **Statistics** (``H``, the norms, the dense stream's ``C`` and ``G``): each rank accumulates its shard's
  running means; :meth:`Comm.merge` gathers them in rank order, row chunk by row chunk, and every rank
  combines them with :func:`pruning.stats.merge_stats`' arithmetic, so every rank holds the same bits and
  they do not depend on which rank finished first. One process with ``engine.shards=N`` accumulates the
  same N shards one after the other and combines them the same way: bit for bit an N-rank run's statistics.
* **Layer solves**: the linears of a sublayer group go to the ranks by longest-processing-time first on
  their cost (the previous block's measured solver seconds for the same linear, else ``rows · cols²``);
  each rank solves its own, and the owners broadcast the new weights and report rows.
* **Perplexity**: windows split the same way, per-window losses gathered in order (the same mean).

Rank 0 writes the record, the model and the tracker's run and scores zero-shot; the others compute and exit.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass, field

import torch

from pruning.errors import ConfigError
from pruning.stats import merge_stats, merged_stats, weighted_sum

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 2**20  # one all_gather carries at most this much of a statistic per rank
ENV_HELP = ("launch it with `torchrun --nproc-per-node N -m experiments.run runtime.distributed=true ...` or as a "
            "SLURM job with several tasks (hydra/launcher=slurm hydra.launcher.tasks_per_node=N)")


def shard_bounds(n: int, batch_size: int, world: int, allow_empty: bool = False) -> list[tuple[int, int]]:
    """``world`` contiguous ranges of ``n`` windows cut at batch boundaries, as even in batches as can be
    (``torch.tensor_split``'s rule: the first ranges take the extra batch); ``allow_empty``: fewer batches than
    ranks leave the last ranges empty (evaluation), else it is an error (calibration)."""
    batches = -(-n // batch_size)
    if batches < world and not allow_empty:
        raise ConfigError(f"{n} windows make {batches} batches of batch_size={batch_size}, fewer than the {world} "
                          "shards (ranks): every rank needs at least one batch; use more windows or fewer ranks")
    per, extra = divmod(batches, world)
    out, start = [], 0
    for r in range(world):
        stop = start + per + (r < extra)
        out.append((start * batch_size, min(stop * batch_size, n)))
        start = stop
    return out


@dataclass
class Comm:
    """This process's place among the job's processes. ``world == 1``: one process, no communication."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives' tensors live
    sent_bytes: int = 0  # what this rank put into collectives (statistics, weights), for the record
    comm_s: float = 0.0  # seconds in those collectives (waiting for slower ranks included)
    _final: object = field(default=None, repr=False)  # the process group of outcome()

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes (record, model, tracker): rank 0."""
        return self.rank == 0

    def shard(self, windows: torch.Tensor | None, batch_size: int, allow_empty: bool = False) -> torch.Tensor | None:
        """This rank's contiguous shard of ``windows`` (all of them in one process)."""
        if windows is None or not self.active:
            return windows
        start, stop = shard_bounds(windows.shape[0], batch_size, self.world, allow_empty)[self.rank]
        return windows[start:stop]

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """``tensor`` overwritten in place with ``src``'s (on :attr:`device` for the transfer)."""
        if not self.active:
            return tensor
        buf = tensor.to(self.device)
        t0 = time.perf_counter()
        torch.distributed.broadcast(buf, src=src)
        self.comm_s += time.perf_counter() - t0
        if self.rank == src:
            self.sent_bytes += buf.numel() * buf.element_size()
        elif buf is not tensor:
            tensor.copy_(buf)
        return tensor

    def gather_rows(self, tensor: torch.Tensor, rows: slice) -> list[torch.Tensor]:
        """Every rank's ``tensor[rows]``, in rank order."""
        part = tensor[rows].contiguous().to(self.device)
        out = [torch.empty_like(part) for _ in range(self.world)]
        t0 = time.perf_counter()
        torch.distributed.all_gather(out, part)
        self.comm_s += time.perf_counter() - t0
        self.sent_bytes += part.numel() * part.element_size()
        return [t.to(tensor.device) for t in out]

    def chunk_rows(self, tensor: torch.Tensor) -> int:
        row_bytes = max(1, tensor[0].numel() * tensor.element_size()) if tensor.dim() > 1 else tensor.element_size()
        return max(1, CHUNK_BYTES // row_bytes)

    def merge_stats(self, parts: list):
        """One linear's statistics over every shard: this process's ``parts`` (:func:`pruning.stats.merge_stats`)
        and, across ranks, each rank's one part gathered in rank order and combined row chunk by row chunk
        with the same arithmetic; every rank gets the same bits."""
        if not self.active:
            return merge_stats(parts)
        if len(parts) != 1:
            raise ValueError(f"a rank holds one calibration shard, not {len(parts)} (engine.shards is for one process)")
        mine = parts[0]
        counts = [int(c) for c in self.gather_objects(mine.nsamples)]
        return merged_stats(counts, mine, lambda name, weights: self._gathered_sum(getattr(mine, name), weights))

    def _gathered_sum(self, t: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """Every rank's ``t`` summed with ``weights`` in rank order, row chunk by row chunk (:func:`weighted_sum`)."""
        out = torch.empty_like(t)
        step = self.chunk_rows(t)
        for start in range(0, t.shape[0], step):
            rows = slice(start, start + step)
            out[rows] = weighted_sum(self.gather_rows(t, rows), weights)
        return out

    def outcome(self, status: str | None = None) -> str:
        """Rank 0's ``status`` of the job ("complete" | "failed") for every rank, once the others are done with
        their part: they wait for it (rank 0's zero-shot and save can outlast the collectives' timeout, so on a
        group of its own with a day's) and drop their progress only when the job is complete."""
        if not self.active:
            return status
        if self._final is None:
            self._final = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(days=1))
        box = [status]
        torch.distributed.broadcast_object_list(box, src=0, group=self._final)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def info(self) -> dict | None:
        """What a record keeps (``job.distributed``); None in one process."""
        if not self.active:
            return None
        return {"world_size": self.world, "backend": self.backend}


LOCAL = Comm()


def balance(costs: dict[str, float], world: int) -> dict[str, int]:
    """Each item's rank: longest processing time first, each to the least loaded rank (ties: the lower rank,
    then the earlier item), so every rank computes the same assignment from the same costs."""
    order = {n: i for i, n in enumerate(costs)}
    load, out = [0.0] * world, {}
    for n in sorted(costs, key=lambda n: (-costs[n], order[n])):
        r = min(range(world), key=lambda r: (load[r], r))
        out[n] = r
        load[r] += costs[n]
    return out


def batch_parts(n: int, batch_size: int, shards: int) -> list[range] | None:
    """``engine.shards`` in one process: the batch ranges of :func:`shard_bounds`' shards (None for one)."""
    if shards == 1:
        return None
    return [range(start // batch_size, -(-stop // batch_size)) for start, stop in shard_bounds(n, batch_size, shards)]


def _environment() -> tuple[int, int, int]:
    """(rank, world, local rank) from torchrun's variables, else a SLURM job's tasks (submitit's
    TorchDistributedEnvironment exports MASTER_ADDR/PORT and the rest for torch.distributed)."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"runtime.distributed=true, but {', '.join(missing)} are not set: this process was not "
                          f"started as one of several; {ENV_HELP}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def init(backend: str = "auto", use_cuda: bool = False, timeout_min: float = 60) -> Comm:
    """Join the job's process group (``runtime.distributed=true``); returns this process's :class:`Comm`.
    ``backend``: auto (nccl when the job computes on CUDA, else gloo) | gloo | nccl."""
    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"runtime.distributed_backend={backend!r}; allowed: auto, gloo, nccl")
    rank, world, local_rank = _environment()
    backend = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
    device = torch.device("cpu")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("runtime.distributed_backend=nccl needs CUDA; use gloo on CPUs")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                             timeout=datetime.timedelta(minutes=timeout_min))
    log.info("distributed: rank %d of %d (%s, local rank %d)", rank, world, backend, local_rank)
    return Comm(rank=rank, world=world, local_rank=local_rank, backend=backend, device=device)


def close(comm: Comm) -> None:
    if comm.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
