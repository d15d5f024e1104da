"""WikiText-2, PTB and C4 text, from a local data root or the Hugging Face hub.

Where the data comes from (first match wins):

1. ``data.root`` in the config, or the environment variable ``PRUNING_DATA_ROOT``;
2. ``../shared/data`` next to the repository, when it exists;
3. the hub, through ``datasets``, with the dataset ids and configs the reference repositories use
   (``data.source=hub`` forces this; ``data.source=local`` forbids it).

Local files are checked byte for byte against the sha256 values published with them
(the provenance of the offline copies: docs/evaluation.md, "Data: where it comes from"); a mismatch is
an error, never a silent fallback.

Every loader returns the texts *and* a provenance dict (source, split, file, sha256, whether the
copy is exact or a subset) that goes into the result record, so a number never travels without
its data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pruning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ENV_DATA_ROOT = "PRUNING_DATA_ROOT"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCAL_ROOT = REPO_ROOT.parent / "shared" / "data"

SOURCES = ("auto", "local", "hub")


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative to the data root
    sha256: str | None
    fmt: str  # "wikitext_raw" | "lines" | "jsonl_text"
    exact: bool = True  # False: a subset or approximation of what the reference code reads
    note: str = ""


@dataclass(frozen=True)
class HubSpec:
    path: str
    name: str | None
    split: str
    column: str
    data_files: dict | None = None
    revision: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is read, joined for perplexity and sampled for calibration."""

    name: str
    local: dict  # split -> list[LocalFile] (first existing wins)
    hub: dict  # split -> HubSpec
    ppl_join: str  # separator joining rows into the perplexity text
    calib_kind: str  # "documents" (per-document accept rule) or "stream" (one joined text)
    calib_join: str = " "
    ppl_docs: int | None = None  # only the first N rows enter the perplexity text (C4: 1100)
    ppl_max_windows: int | None = None  # token cap in windows (C4: 256 · seqlen)
    notes: dict = field(default_factory=dict)


_C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
_C4_VAL = "en/c4-validation.00000-of-00008.json.gz"

DATASETS: dict[str, DatasetSpec] = {
    "wikitext2": DatasetSpec(
        name="wikitext2",
        local={
            "test": [LocalFile("wikitext2/wiki.test.raw",
                               "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08", "wikitext_raw")],
            "validation": [LocalFile("wikitext2/wiki.valid.raw",
                                     "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7", "wikitext_raw")],
            "train": [LocalFile("wikitext2/wiki.train.raw",
                                "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57", "wikitext_raw")],
        },
        hub={s: HubSpec("wikitext", "wikitext-2-raw-v1", s, "text") for s in ("train", "validation", "test")},
        ppl_join="\n\n",  # sparsegpt/wanda: "\n\n".join(rows), empty rows included
        calib_kind="stream",  # sparsegpt's wikitext2 loader: " ".join(train rows), random offsets
    ),
    "ptb": DatasetSpec(
        name="ptb",
        local={
            "test": [LocalFile("ptb/ptb.test.txt",
                               "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", "lines")],
            "validation": [LocalFile("ptb/ptb.valid.txt",
                                     "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", "lines")],
            # Only the md5 of the original train file is published (f26c4b92…); it is not verified.
            "train": [LocalFile("ptb/ptb.train.txt", None, "lines")],
        },
        # `ptb_text_only` is a script dataset, which datasets >= 4 refuses (huggingface/datasets#7693);
        # the hub's parquet conversion of the same data is read instead.
        hub={s: HubSpec("ptb-text-only/ptb_text_only", "penn_treebank", s, "sentence",
                        revision="refs/convert/parquet") for s in ("train", "validation", "test")},
        ppl_join=" ",  # sparsegpt: " ".join(sentence)
        calib_kind="stream",
    ),
    "c4": DatasetSpec(
        name="c4",
        local={
            "train": [
                LocalFile("c4/c4-train.00000-of-01024.json.gz", None, "jsonl_text",
                          note="the full train shard 0 (user-supplied)"),
                LocalFile("c4/c4_train_shard00000_first1000.jsonl",
                          "cdd5b754119131d2934e3e799a059a9d64f53a6aac9e7e2ef79b43120bb01a32", "jsonl_text",
                          exact=False,
                          note="first 1000 of the 356,317 documents of C4 train shard 0: calibration is "
                               "approximate, not index-exact"),
            ],
            "validation": [
                LocalFile("c4/c4-validation.00000-of-00008.json.gz", None, "jsonl_text",
                          note="the full validation shard 0 (user-supplied)"),
                LocalFile("c4/c4_validation_subset_2k.jsonl",
                          "fec888b4463d6e62a03db1e6bef125e53dab939dfec695bdd3be612b5d8db0b6", "jsonl_text",
                          exact=False,
                          note="2000 C4 validation documents, not proven to be the first of shard 0: "
                               "C4 perplexity is approximate"),
            ],
        },
        hub={
            "train": HubSpec("allenai/c4", None, "train", "text", data_files={"train": _C4_TRAIN}),
            "validation": HubSpec("allenai/c4", None, "validation", "text", data_files={"validation": _C4_VAL}),
        },
        ppl_join=" ",
        calib_kind="documents",
        ppl_docs=1100,  # sparsegpt: ' '.join(valdata[:1100]['text'])
        ppl_max_windows=256,  # ... truncated to 256 · seqlen tokens
    ),
}


@dataclass
class TextData:
    """Rows of one dataset split and where they came from."""

    rows: list[str]
    info: dict


def resolve_data_root(root: str | os.PathLike | None = None) -> Path | None:
    """The local data root: ``root`` if given, else ``$PRUNING_DATA_ROOT``, else ``../shared/data``."""
    for candidate, origin in ((root, "data.root"), (os.environ.get(ENV_DATA_ROOT), ENV_DATA_ROOT)):
        if candidate:
            path = Path(candidate).expanduser().resolve()
            if not path.is_dir():
                raise DataError(f"{origin}={str(candidate)!r} is not a directory")
            return path
    return DEFAULT_LOCAL_ROOT if DEFAULT_LOCAL_ROOT.is_dir() else None


def root_origin(root: str | os.PathLike | None = None) -> str:
    """Where the data root comes from, for messages: ``data.root=…``, ``PRUNING_DATA_ROOT=…`` or the default."""
    if root:
        return f"data.root={str(root)!r}"
    if os.environ.get(ENV_DATA_ROOT):
        return f"{ENV_DATA_ROOT}={os.environ[ENV_DATA_ROOT]!r}"
    return f"the default {DEFAULT_LOCAL_ROOT}"


def hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _not_local(name: str, split: str, spec: DatasetSpec, data_root: Path, root) -> str:
    wanted = [lf.path for lf in spec.local.get(split, [])] or ["(no local form)"]
    return (f"{name}/{split} is not in the data root {data_root} (from {root_origin(root)}; looked for: "
            f"{', '.join(wanted)})")


def _probe_hub(name: str, split: str, spec: DatasetSpec, where: str) -> None:
    """Before any model is loaded: the hub copy a job would fall back to is reachable (one request, 10 s),
    else a :class:`DataError` saying what is missing locally and why the hub is no way out."""
    if split not in spec.hub:
        raise DataError(f"{where}, and {name}/{split} has no hub source; add the file to the data root")
    if hub_offline():
        raise DataError(f"{where}, and the hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); add the file to the "
                        "data root, or unset those variables to read it from the hub")
    hub = spec.hub[split]
    try:
        from huggingface_hub import HfApi
        HfApi().dataset_info(hub.path, revision=hub.revision, timeout=10)
    except Exception as e:
        raise DataError(f"{where}, and the hub copy {hub.path} is not reachable ({type(e).__name__}: "
                        f"{str(e)[:200]}); add the file to the data root") from None


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


@lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path), st.st_mtime_ns, st.st_size)


def verify_file(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise :class:`DataError` if it differs from ``expected``."""
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise DataError(
            f"checksum mismatch for {path}: sha256 {actual} but the published value is {expected}. "
            "The file is corrupt or not the one the protocol expects; restore it from its source (docs/evaluation.md: "
            "'Data: where it comes from') or point PRUNING_DATA_ROOT / data.root elsewhere"
        )
    return actual


def _read_local(path: Path, fmt: str) -> list[str]:
    """The rows of a local file; a truncated or malformed file is a :class:`DataError` naming it."""
    import gzip
    import zlib

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            if fmt == "wikitext_raw":
                # HF `wikitext` rows: each line with its "\n" when it has content, "" when blank.
                return [line if line.strip() else "" for line in f]
            if fmt == "lines":
                # HF `ptb_text_only`: sentence = line.strip()
                return [line.strip() for line in f]
            if fmt == "jsonl_text":
                return [json.loads(line)["text"] for line in f if line.strip()]
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError, json.JSONDecodeError, KeyError,
            TypeError) as e:
        raise DataError(f"{path} is unreadable as {fmt} ({type(e).__name__}: {e}): truncated or not the expected "
                        "format; restore or re-download it") from None
    raise AssertionError(fmt)


@lru_cache(maxsize=16)
def _gzip_intact(path: str, mtime_ns: int, size: int) -> str | None:
    """None when the gzip stream decompresses to its end with a valid CRC, else why not."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _local_file(spec: DatasetSpec, split: str, data_root: Path) -> tuple[Path, LocalFile] | None:
    """The first local form of ``split`` present in ``data_root`` (the file :func:`load_rows` reads)."""
    for lf in spec.local.get(split, []):
        if (data_root / lf.path).is_file():
            return data_root / lf.path, lf
    return None


def preflight(name: str, split: str, *, root: str | None = None, source: str = "auto", verify: bool = True) -> str:
    """Check, before any model is loaded, the file :func:`load_rows` will read for ``name``/``split``: it
    exists where ``source`` requires it, its published sha256 matches (``verify``), and a gzip without a
    published checksum decompresses to its end. Returns where the rows will come from (a path or "hub");
    hub data cannot be checked ahead."""
    spec = dataset_spec(name)
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r}; allowed: {', '.join(SOURCES)}")
    data_root = resolve_data_root(root) if source != "hub" else None
    found = _local_file(spec, split, data_root) if data_root is not None else None
    if found is None:
        if source == "local":
            load_rows(name, split, root=root, source=source, verify=verify)  # raises, naming what is missing
        if source == "auto":  # no local file: fail now if the hub cannot stand in, not after the model load
            where = (_not_local(name, split, spec, data_root, root) if data_root is not None else
                     f"there is no local data root (set {ENV_DATA_ROOT} or data.root)")
            _probe_hub(name, split, spec, where)
        return "hub"
    path, lf = found
    if verify and lf.sha256:
        verify_file(path, lf.sha256)
    elif path.suffix == ".gz":
        st = path.stat()
        broken = _gzip_intact(str(path), st.st_mtime_ns, st.st_size)
        if broken:
            raise DataError(f"{path} is a truncated or corrupt gzip ({broken}); restore or re-download it")
    return str(path)


def _read_hub(spec: HubSpec, local: str | None = None) -> list[str]:
    """The rows from the hub; ``local`` says why the data root could not serve them (for the error)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError("the `datasets` package is needed to read from the hub") from e
    kwargs = {"split": spec.split}
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    if spec.revision:
        kwargs["revision"] = spec.revision
    try:
        ds = datasets.load_dataset(spec.path, spec.name, **kwargs)
    except Exception as e:
        raise DataError(
            f"could not load {spec.path}{'/' + spec.name if spec.name else ''} split {spec.split!r} from the hub "
            f"({type(e).__name__}: {e}). "
            + (f"{local}: add the file there" if local else
               f"Without network access, set {ENV_DATA_ROOT} (or data.root) to a folder holding the offline copies")
        ) from e
    return list(ds[spec.column])


def load_rows(name: str, split: str, *, root: str | None = None, source: str = "auto",
              verify: bool = True) -> TextData:
    """Read the rows of ``name``/``split`` (HF-style rows: WikiText lines, PTB sentences, C4 documents)."""
    spec = dataset_spec(name)
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r}; allowed: {', '.join(SOURCES)}")
    if split not in spec.hub and split not in spec.local:
        allowed = sorted(set(spec.hub) | set(spec.local))
        raise ConfigError(f"dataset {name!r} has no split {split!r}; allowed: {', '.join(allowed)}")

    data_root = resolve_data_root(root) if source != "hub" else None
    if data_root is not None:
        found = _local_file(spec, split, data_root)
        if found is not None:
            path, lf = found
            sha = verify_file(path, lf.sha256 if verify else None)
            rows = _read_local(path, lf.fmt)
            info = {"dataset": name, "split": split, "source": "local", "path": str(path),
                    "sha256": sha, "checksum_verified": bool(verify and lf.sha256), "exact": lf.exact,
                    "rows": len(rows)}
            if lf.note:
                info["note"] = lf.note
            log.info("%s/%s: %d rows from %s%s", name, split, len(rows), path,
                     "" if lf.exact else f" ({lf.note})")
            return TextData(rows, info)
        if source == "local":
            raise DataError(f"{_not_local(name, split, spec, data_root, root)}; add the file there or allow the hub "
                            "with data.source=auto|hub")
        local = _not_local(name, split, spec, data_root, root)
        log.warning("%s; falling back to the hub", local)
    elif source == "local":
        raise DataError(
            f"no local data root: set {ENV_DATA_ROOT} or data.root, or place the data in {DEFAULT_LOCAL_ROOT}"
        )

    if split not in spec.hub:
        raise DataError(f"{name}/{split} has no hub source; allowed local splits: {', '.join(spec.local)}")
    hub = spec.hub[split]
    rows = _read_hub(hub, local if data_root is not None else None)
    info = {"dataset": name, "split": split, "source": "hub", "hub_id": hub.path, "hub_config": hub.name,
            "data_files": hub.data_files, "revision": hub.revision, "exact": True, "rows": len(rows)}
    return TextData(rows, info)


def perplexity_text(name: str, split: str, **kwargs) -> TextData:
    """The one text the perplexity protocol tokenizes, built with the dataset's join rule."""
    spec = dataset_spec(name)
    data = load_rows(name, split, **kwargs)
    rows = data.rows if spec.ppl_docs is None else data.rows[: spec.ppl_docs]
    info = dict(data.info, join=spec.ppl_join, rows_used=len(rows))
    return TextData([spec.ppl_join.join(rows)], info)
