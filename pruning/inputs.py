"""Checksums of the files a job reads besides the published data: an allocation profile, a local
checkpoint directory (weights, config, tokenizer files, sidecar), a GGUF file.

A record stores them as ``inputs`` (key -> ``{"path", "sha256", "bytes", "files"}``), and a job whose
complete record holds other checksums than its files have now is re-run instead of skipped
(:func:`pruning.results.reusable_record`): the config hash names the *path*, these name the *contents*.

Hashing a 70B checkpoint reads ~140 GB, so each file's digest is cached under the model cache
(``$PRUNING_CACHE_DIR/digests``) keyed by the file's identity: device, inode, size, mtime and ctime
in nanoseconds. ctime cannot be set by a user, and any write, ``cp``, ``rsync`` or rename of another file
over the path changes it (or the inode), so a cached digest is never served for changed contents.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pruning.data import file_sha256
from pruning.errors import ModelLoadError
from pruning.models import cache_root, packaged_gguf_path

log = logging.getLogger(__name__)

DIGEST_DIR = "digests"


def _identity(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def file_digest(path: Path, cache: Path | None) -> str:
    """sha256 of ``path``'s contents, read once per file identity (module docstring)."""
    entry = cache / DIGEST_DIR / _identity(path) if cache is not None else None
    if entry is not None and entry.is_file():
        cached = entry.read_text(encoding="ascii", errors="replace").strip()
        if len(cached) == 64:
            return cached
    size = path.stat().st_size
    if size > 1 << 30:
        log.info("checksumming %s (%.1f GB; once, then cached by file identity)", path, size / 2**30)
    digest = file_sha256(path)  # the loader's own (memoised in-process: the model load reads no second time)
    if entry is not None:
        try:  # a cache is an optimisation: a read-only cache directory costs time, not correctness
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
            tmp.write_text(digest + "\n", encoding="ascii")
            os.replace(tmp, entry)
        except OSError as e:
            log.debug("digest cache not written (%s)", e)
    return digest


def fingerprint(path: Path, cache: Path | None) -> dict:
    """``{"path", "sha256", "bytes", "files"}`` of a file, or of a directory's regular files (recursively,
    by relative name: the digest of the sorted ``name  sha256`` lines, as ``sha256sum`` prints them)."""
    if path.is_file():
        return {"path": str(path), "sha256": file_digest(path, cache), "bytes": path.stat().st_size, "files": 1}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(path).as_posix()}  {file_digest(p, cache)}\n" for p in files)
    return {"path": str(path), "sha256": hashlib.sha256(lines.encode()).hexdigest(),
            "bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def input_paths(config: dict) -> dict[str, Path]:
    """The input files of a resolved job config that exist now (a missing one is validation's to report):
    ``allocation.path`` (allocation=profile), ``model.path`` (source local: the directory; gguf: the file),
    ``model.gguf`` (source packaged_gguf: the file inside the installed package)."""
    out: dict[str, Path] = {}
    alloc = config.get("allocation") or {}
    if alloc.get("name") == "profile" and alloc.get("path"):
        out["allocation.path"] = Path(str(alloc["path"])).expanduser()
    model = config.get("model") or {}
    if model.get("source") in ("local", "gguf") and model.get("path"):
        out["model.path"] = Path(str(model["path"])).expanduser()
    elif model.get("source") == "packaged_gguf" and model.get("package") and model.get("gguf_file"):
        try:
            out["model.gguf"] = packaged_gguf_path(model["package"], model["gguf_file"])
        except ModelLoadError:
            pass
    return {k: p for k, p in out.items() if p.exists()}


def job_inputs(config: dict) -> dict[str, dict]:
    """Checksums of every input file of a resolved job config (:func:`input_paths`)."""
    cache = cache_root((config.get("model") or {}).get("cache_dir") or (config.get("paths") or {}).get("cache"))
    return {key: fingerprint(path, cache) for key, path in input_paths(config).items()}


def recorded_inputs(record: dict) -> dict[str, str]:
    """key -> sha256 of the inputs a record was computed from. Records from before ``inputs`` existed
    state a GGUF's checksum in ``model.gguf_sha256``: that one still counts."""
    if isinstance(record.get("inputs"), dict):
        return {k: (v or {}).get("sha256") for k, v in record["inputs"].items()}
    gguf_sha = (record.get("model") or {}).get("gguf_sha256")
    source = ((record.get("config") or {}).get("model") or {}).get("source")
    if gguf_sha and source in ("gguf", "packaged_gguf"):
        return {"model.path" if source == "gguf" else "model.gguf": gguf_sha}
    return {}


def changed_inputs(record: dict, current: dict[str, dict]) -> list[str]:
    """Why ``record`` was not computed from the input files as they are now: one line per differing key
    (an empty list when they match)."""
    before = recorded_inputs(record)
    out = []
    for key, now in current.items():
        if key not in before:
            out.append(f"{key} {now['path']} has no checksum in the record")
        elif before[key] != now["sha256"]:
            out.append(f"{key} {now['path']} changed (sha256 {str(before[key])[:12]}… in the record, "
                       f"{now['sha256'][:12]}… now)")
    return out
