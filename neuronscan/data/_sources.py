"""List probe inputs (image folders, manifests), read their bytes, and derive concept labels.

Pure functions: the Ray probe pipeline calls them, but nothing here imports Ray. Paths may be local or any
fsspec URI (``s3://bucket/prefix``, ``memory://…``); returned URIs keep the scheme they were given with.

A listing is a DataFrame with the columns of `LISTING_SCHEMA`:
``image_id int64`` (unique), ``uri string`` (may be null: that row fails later as ``missing``),
``concepts list<string>``.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterable, MutableMapping

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from neuronscan.data._decode import DecodeError
from neuronscan.io import INPUTS_SCHEMA, LABELS_SCHEMA, redact_uri, scrub, uri_secrets

__all__ = [
    "CONCEPT_SEPARATOR",
    "LABELS_SCHEMA",
    "LISTING_SCHEMA",
    "duplicate_uris",
    "labels_from_listing",
    "list_image_folder",
    "read_blob",
    "read_manifest",
    "redact_uri",
]

LISTING_SCHEMA = INPUTS_SCHEMA
"""Arrow schema of a listing (``inputs.parquet``; owned by `neuronscan.io`); write one with
``pa.Table.from_pandas(df, schema=LISTING_SCHEMA, preserve_index=False)``.

``pandas`` holds ``uri`` as its ``str`` dtype (null as NaN) and ``concepts`` as ``list<string>[pyarrow]``.
"""

CONCEPT_SEPARATOR = "|"
"""Separator of several concepts in one CSV cell (or in a JSONL string value): ``"dog|animal"``."""

_CONCEPTS_DTYPE = pd.ArrowDtype(pa.list_(pa.string()))
_MANIFEST_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")

log = logging.getLogger(__name__)


def list_image_folder(
    root: str | os.PathLike,
    *,
    filesystem: fsspec.AbstractFileSystem | None = None,
    extensions: Iterable[str] | None = None,
) -> pd.DataFrame:
    """List an ImageNet-layout folder ``ROOT/<class>/<file>`` as probe inputs.

    Every regular file is listed, images or not, so that a non-image shows up later as a failed row
    instead of vanishing. Hidden entries (any path component starting with ``.``: ``.DS_Store``,
    ``._x.jpg``, ``.ipynb_checkpoints/``) are skipped. The class is the first folder under ``ROOT`` (files
    deeper inside it belong to it, as in torchvision's ``ImageFolder``); files directly under ``ROOT`` get no
    concept.

    Symlinked dataset trees (local folders): a symlink to a file is listed like the file, under the link's
    own path and class; a dangling symlink, or one that loops, is listed too (it is an input) and fails when
    read with ``missing: broken symlink: <path> -> <target> ...``; a symlink to a folder is followed, as
    ``ImageFolder`` does, unless it points to that folder itself or to one it sits inside (a loop: its files
    are already listed through the real path; a warning names it). Sockets, FIFOs and devices are skipped.

    Args:
        root: local path or fsspec URI (``s3://bucket/prefix``).
        filesystem: an fsspec filesystem to list with (e.g. an ``s3fs.S3FileSystem`` with a custom endpoint);
            by default it is inferred from ``root``.
        extensions: keep only files with these suffixes (case-insensitive, with or without the dot);
            ``None`` keeps every file.

    Returns:
        DataFrame with `LISTING_SCHEMA` columns, one row per file, ``image_id`` ``0..n-1`` in sorted
        relative-path order (deterministic across runs and machines). URIs keep ``root``'s scheme; local
        paths are made absolute.

    Raises:
        ValueError: if ``root`` does not exist, is not a folder, or holds no (matching) files.
        TypeError: if ``filesystem`` is not an fsspec filesystem.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "dog").mkdir(); _ = (root / "dog" / "a.jpg").write_bytes(b"...")
        >>> list_image_folder(str(root))[["image_id", "concepts"]].to_dict("records")
        [{'image_id': 0, 'concepts': ['dog']}]
    """
    root = os.fspath(root)
    fs, root_path = _resolve_filesystem(root, filesystem)
    has_scheme = "://" in root or "::" in root
    if has_scheme:
        prefix = root.rstrip("/")
    elif isinstance(fs, LocalFileSystem):
        prefix = root_path.rstrip("/")
    else:
        prefix = fs.unstrip_protocol(root_path).rstrip("/")

    if not fs.exists(root_path):
        raise ValueError(f"image folder {root!r} does not exist")
    if not fs.isdir(root_path):
        raise ValueError(f"image folder {root!r} is a file, not a folder; to list a manifest use read_manifest")

    wanted = _normalise_extensions(extensions)
    base = root_path.rstrip("/")
    if isinstance(fs, LocalFileSystem):
        candidates = _walk_local_folder(base or "/")
    else:
        candidates = _walk_filesystem(fs, root_path, base)
    relpaths = []
    for rel in candidates:
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if wanted is not None and posixpath.splitext(rel)[1].lower() not in wanted:
            continue
        relpaths.append(rel)
    if not relpaths:
        detail = f" with extensions {sorted(wanted)}" if wanted is not None else ""
        raise ValueError(f"no files under {root!r}{detail} (hidden files are skipped)")

    relpaths.sort()
    concepts = [[rel.split("/", 1)[0]] if "/" in rel else [] for rel in relpaths]
    return _listing_frame(
        np.arange(len(relpaths), dtype=np.int64), [f"{prefix}/{rel}" for rel in relpaths], concepts
    )


def _walk_filesystem(fs: fsspec.AbstractFileSystem, root_path: str, base: str) -> list[str]:
    """Relative paths of every file under ``root_path`` on any fsspec filesystem (object stores have no links)."""
    relpaths = []
    for name, info in fs.find(root_path, withdirs=False, detail=True).items():
        is_link = bool(info.get("islink")) and info.get("type") != "directory"
        if (info.get("type") != "file" and not is_link) or name.endswith("/") or not name.startswith(base + "/"):
            continue
        relpaths.append(name[len(base) + 1 :])
    return relpaths


def _walk_local_folder(base: str) -> list[str]:
    """Relative paths of the inputs under a local folder: files and symlinks that are not folders.

    Symlinked folders are followed unless they point to the folder they sit in or one above it (compared by
    device and inode, the folders above ``base`` included), so a link to ``..`` or ``/`` ends the walk there.
    Hidden entries are pruned; unreadable sub-folders are skipped with a warning, as fsspec's ``find`` omits them.
    """
    above: set[tuple[int, int]] = set()
    folder = os.path.realpath(base)
    while True:
        try:
            st = os.stat(folder)
            above.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent

    relpaths: list[str] = []
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [(base, "", frozenset(above))]
    while stack:
        folder, rel, inside = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            log.warning("image folder: skipping %r, which cannot be listed: %s", folder, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows a symlink; False for a dangling or looping one
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in inside:
                    log.warning(
                        "image folder: not following %r -> %r, a symlink to a folder it is inside (a loop)",
                        entry.path, _readlink(entry.path),
                    )
                    continue
                stack.append((entry.path, child, inside | {key}))
            elif entry.is_symlink() or entry.is_file():
                relpaths.append(child)
    return relpaths


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest of probe inputs from Parquet, CSV or JSONL (chosen by the file extension).

    Columns: ``uri`` (required), ``image_id`` (optional, integer, unique; else ``0..n-1`` in file order) and
    ``concepts`` (optional). Other columns are ignored. ``concepts`` is a list of strings in Parquet and JSONL;
    in CSV it is one cell with concepts separated by `CONCEPT_SEPARATOR` (``"dog|animal"``), and a string in
    JSONL is split the same way. Empty cells mean no concepts.

    Rows are never dropped: a null or empty ``uri`` stays a row (it fails later as ``missing``), and a
    ``uri`` that appears in several rows keeps one row, with its own ``image_id``, per occurrence (find them
    with `duplicate_uris`). A relative ``uri`` (no scheme, not absolute) is resolved against the manifest's
    folder, so a manifest can sit next to its images, locally or on S3.

    Compressed text manifests (``.csv.gz``, ``.jsonl.zst`` …) are read transparently.

    Args:
        path: local path or fsspec URI of the manifest.

    Returns:
        DataFrame with `LISTING_SCHEMA` columns, in file order.

    Raises:
        ValueError: if the file does not exist, has an unsupported extension, no rows, no ``uri`` column,
            null, non-integer or repeated ``image_id`` values, or malformed ``concepts``.

    Example:
        >>> import tempfile, pathlib
        >>> csv = pathlib.Path(tempfile.mkdtemp()) / "probe.csv"
        >>> _ = csv.write_text("uri,concepts\\nimg/a.jpg,dog|animal\\n,\\n")
        >>> df = read_manifest(str(csv))
        >>> df["concepts"].tolist(), df["uri"].isna().tolist()
        ([['dog', 'animal'], []], [False, True])
    """
    path = os.fspath(path)
    fs, fpath = fsspec.core.url_to_fs(path)
    if not fs.exists(fpath):
        raise ValueError(f"manifest {path!r} does not exist")
    fmt = _manifest_format(path)
    try:
        raw = _read_manifest_table(fs, fpath, fmt)
    except (ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot parse manifest {path!r} as {fmt.upper()}: {exc}") from exc
    if "uri" not in raw.columns:
        found = ", ".join(map(str, raw.columns)) or "none"
        raise ValueError(f"manifest {path!r} has no 'uri' column; found columns: {found}")
    if len(raw) == 0:
        raise ValueError(f"manifest {path!r} has no rows")

    base = _manifest_base(path)
    uris = [_normalise_uri(value, base) for value in raw["uri"].tolist()]
    if "image_id" in raw.columns:
        image_ids = _validate_image_ids(raw["image_id"], path)
    else:
        image_ids = np.arange(len(raw), dtype=np.int64)
    if "concepts" in raw.columns:
        concepts = [_parse_concepts(value, row, path) for row, value in enumerate(raw["concepts"].tolist())]
    else:
        concepts = [[] for _ in range(len(raw))]
    return _listing_frame(image_ids, uris, concepts)


def duplicate_uris(listing: pd.DataFrame) -> pd.DataFrame:
    """Rows whose (non-null) ``uri`` appears more than once in a listing.

    Duplicates are allowed (each row is probed and scored as its own image); this says how many there are.

    Args:
        listing: a DataFrame with ``image_id`` and ``uri`` columns.

    Returns:
        DataFrame ``(image_id, uri)`` of every row in a repeated group, sorted by ``uri`` then ``image_id``;
        empty when all URIs are distinct. ``result["uri"].nunique()`` is the number of repeated URIs.

    Example:
        >>> df = pd.DataFrame({"image_id": [0, 1, 2], "uri": ["a", "b", "a"]})
        >>> duplicate_uris(df)["image_id"].tolist()
        [0, 2]
    """
    _require_columns(listing, ("image_id", "uri"), "listing")
    present = listing[listing["uri"].notna()]
    repeated = present[present["uri"].duplicated(keep=False)]
    return repeated[["image_id", "uri"]].sort_values(["uri", "image_id"], kind="stable").reset_index(drop=True)


def labels_from_listing(listing: pd.DataFrame) -> pd.DataFrame:
    """Turn a listing's ``concepts`` column into long-format labels, one row per positive.

    Args:
        listing: a DataFrame with ``image_id`` and ``concepts`` (lists of strings) columns.

    Returns:
        DataFrame ``(image_id int64, concept string)`` (`LABELS_SCHEMA`), in listing order, without
        repeated pairs; images with no concepts contribute no rows.

    Raises:
        ValueError: if a required column is missing.

    Example:
        >>> df = pd.DataFrame({"image_id": [0, 1], "concepts": [["dog", "animal"], []]})
        >>> labels_from_listing(df).to_dict("records")
        [{'image_id': 0, 'concept': 'dog'}, {'image_id': 0, 'concept': 'animal'}]
    """
    _require_columns(listing, ("image_id", "concepts"), "listing")
    image_ids: list[int] = []
    names: list[str] = []
    seen: set[tuple[int, str]] = set()
    for image_id, concepts in zip(listing["image_id"].tolist(), listing["concepts"].tolist(), strict=True):
        if concepts is None or (isinstance(concepts, float) and math.isnan(concepts)):
            continue
        for concept in concepts:
            if concept is None or (int(image_id), concept) in seen:
                continue
            seen.add((int(image_id), concept))
            image_ids.append(int(image_id))
            names.append(str(concept))
    return pd.DataFrame(
        {"image_id": np.asarray(image_ids, dtype=np.int64), "concept": pd.Series(names, dtype="str")}
    )


def read_blob(uri: str, filesystem_cache: MutableMapping[str, fsspec.AbstractFileSystem] | None = None) -> bytes:
    """Read one input's bytes through fsspec; every failure becomes a `DecodeError`.

    Args:
        uri: local path or fsspec URI.
        filesystem_cache: optional dict from protocol (``"s3"``, ``"file"`` …) to filesystem, filled on first
            use so that one worker reuses its connections. Pre-seed it to read with custom options, e.g.
            ``{"s3": s3fs.S3FileSystem(endpoint_url=...)}``. Chained URLs (``simplecache::s3://…``) are not cached.

    Returns:
        The file content.

    Raises:
        DecodeError: ``missing`` (no uri, file or key not found, a dangling or looping symlink: ``missing:
            broken symlink: <path> -> <target> does not exist``), ``not_a_file`` (a folder),
            ``permission_denied``, or ``read_error`` (anything else, e.g. an unknown protocol). The message
            names the URI with any credentials (``user:secret@``, a signed query string) removed.

    Example:
        >>> read_blob("/nonexistent/a.jpg")
        Traceback (most recent call last):
        ...
        neuronscan.data._decode.DecodeError: missing: '/nonexistent/a.jpg' does not exist
    """
    if uri is None or (isinstance(uri, float) and math.isnan(uri)):
        raise DecodeError("missing", "no uri given")
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise DecodeError("missing", f"uri must be a string, got {type(uri).__name__}")
    if not uri.strip():
        raise DecodeError("missing", "empty uri")

    shown = redact_uri(uri)
    try:
        fs, path = _filesystem_for(uri, filesystem_cache)
        return fs.cat_file(path)
    except IsADirectoryError as exc:
        raise DecodeError("not_a_file", f"{shown!r} is a folder, not a file") from exc
    except FileNotFoundError as exc:
        raise (_broken_symlink(uri, shown) or DecodeError("missing", f"{shown!r} does not exist")) from exc
    except PermissionError as exc:
        raise DecodeError("permission_denied", f"{shown!r}: {_redact_text(str(exc), uri, shown)}") from exc
    except Exception as exc:  # noqa: BLE001 - a read failure is a failed row, never a crashed batch
        broken = _broken_symlink(uri, shown) if isinstance(exc, OSError) and exc.errno == errno.ELOOP else None
        if broken is not None:
            raise broken from exc
        if _is_missing_key(exc):
            raise DecodeError("missing", f"{shown!r} does not exist") from exc
        message = _redact_text(str(exc), uri, shown)
        raise DecodeError("read_error", f"{shown!r}: {type(exc).__name__}: {message}") from exc


def _broken_symlink(uri: str, shown: str) -> DecodeError | None:
    """``missing: broken symlink: …`` for a local path that is a symlink whose target cannot be reached, else None."""
    if fsspec.utils.get_protocol(uri) not in ("file", "local") or "::" in uri:
        return None
    path = LocalFileSystem._strip_protocol(uri)
    target = "?"
    try:
        if not os.path.islink(path):
            return None
        target = os.readlink(path)
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return DecodeError("missing", f"broken symlink: {shown!r} -> {target!r} is a symlink loop")
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return DecodeError("missing", f"broken symlink: {shown!r} -> {target!r} does not exist")
        return None
    return None  # the link resolves (the file appeared since the read failed): no link to blame


def _redact_text(text: str, uri: str, shown: str) -> str:
    """Remove a URI's credentials from an error message that may quote it."""
    return scrub(text.replace(uri, shown), uri_secrets([uri]))


def _is_missing_key(exc: BaseException) -> bool:
    """True for object-store 'no such key' errors that were not translated to FileNotFoundError."""
    if type(exc).__name__ in ("NoSuchKey", "NoSuchBucket"):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound")
    return False


def _filesystem_for(
    uri: str, cache: MutableMapping[str, fsspec.AbstractFileSystem] | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and in-filesystem path for a URI, reusing ``cache`` when given."""
    if cache is None or "::" in uri:
        return fsspec.core.url_to_fs(uri)
    protocol = fsspec.utils.get_protocol(uri)
    fs = cache.get(protocol)
    if fs is None:
        fs, path = fsspec.core.url_to_fs(uri)
        cache[protocol] = fs
        return fs, path
    return fs, fs._strip_protocol(uri)


def _resolve_filesystem(
    root: str, filesystem: fsspec.AbstractFileSystem | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and in-filesystem path of a folder root."""
    if filesystem is None:
        return fsspec.core.url_to_fs(root)
    if not isinstance(filesystem, fsspec.AbstractFileSystem):
        raise TypeError(
            f"filesystem must be an fsspec filesystem (e.g. s3fs.S3FileSystem), got {type(filesystem).__name__}"
        )
    return filesystem, filesystem._strip_protocol(root)


def _normalise_extensions(extensions: Iterable[str] | None) -> frozenset[str] | None:
    """Lower-case suffixes with a leading dot, or None for no filter."""
    if extensions is None:
        return None
    if isinstance(extensions, str):
        extensions = [extensions]
    wanted = frozenset(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)
    if not wanted:
        raise ValueError("extensions is empty; pass None to list every file")
    return wanted


def _listing_frame(image_ids: np.ndarray, uris: list[str | None], concepts: list[list[str]]) -> pd.DataFrame:
    """Assemble a listing DataFrame with the documented dtypes."""
    return pd.DataFrame(
        {
            "image_id": np.asarray(image_ids, dtype=np.int64),
            "uri": pd.Series(uris, dtype="str"),
            "concepts": pd.Series(concepts, dtype=_CONCEPTS_DTYPE),
        }
    )


def _manifest_format(path: str) -> str:
    """'parquet', 'csv' or 'jsonl' from the file name, ignoring a compression suffix."""
    name = path.rsplit("/", 1)[-1].lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            if name.endswith((".parquet", ".pq")):
                raise ValueError(f"manifest {path!r}: Parquet is compressed internally; drop the {suffix} suffix")
            break
    fmt = _MANIFEST_FORMATS.get(posixpath.splitext(name)[1])
    if fmt is None:
        raise ValueError(
            f"unsupported manifest {path!r}; expected a .parquet, .csv or .jsonl file "
            f"(text formats may end in {', '.join(_COMPRESSION_SUFFIXES)})"
        )
    return fmt


def _read_manifest_table(fs: fsspec.AbstractFileSystem, fpath: str, fmt: str) -> pd.DataFrame:
    """Read the raw manifest columns we use (others are skipped where the format allows)."""
    if fmt == "parquet":
        with fs.open(fpath, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            wanted = [c for c in ("image_id", "uri", "concepts") if c in names]
            if "uri" not in wanted:
                return pd.DataFrame(columns=names)
            return parquet.read(columns=wanted).to_pandas()
    with fs.open(fpath, "rb", compression="infer") as f:
        text = f.read().decode("utf-8-sig")
    if not text.strip():
        return pd.DataFrame(columns=["uri"])
    if fmt == "csv":
        # Everything as text, and only empty cells as missing: a concept called "NA" stays a concept.
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    return pd.read_json(io.StringIO(text), lines=True, dtype=False, convert_dates=False)


def _manifest_base(path: str) -> str:
    """Folder that relative URIs in a manifest are resolved against."""
    if "://" in path or "::" in path:
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def _normalise_uri(value: object, base: str) -> str | None:
    """Strip a URI, map empty to None, and resolve a relative path against the manifest folder."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    uri = str(value).strip()
    if not uri:
        return None
    if "://" in uri or "::" in uri or uri.startswith("/") or os.path.isabs(uri):
        return uri
    return f"{base.rstrip('/')}/{uri}"


def _validate_image_ids(column: pd.Series, path: str) -> np.ndarray:
    """Integer, non-null, unique image ids, or a ValueError that lists the offending rows."""
    numbers = pd.to_numeric(column, errors="coerce")
    bad = numbers.isna()
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        examples = ", ".join(f"row {r}: {column.iloc[r]!r}" for r in rows[:5])
        raise ValueError(
            f"manifest {path!r}: image_id must be an integer in every row; {len(rows):,} rows are empty or "
            f"not numbers ({examples}). Fill them, or drop the column to have ids assigned 0..n-1"
        )
    values = numbers.to_numpy(dtype=np.float64) if numbers.dtype.kind == "f" else None
    if values is not None and not np.all(values == np.round(values)):
        rows = np.flatnonzero(values != np.round(values))
        examples = ", ".join(f"row {r}: {values[r]!r}" for r in rows[:5])
        raise ValueError(f"manifest {path!r}: image_id must be an integer; found fractions ({examples})")
    image_ids = numbers.to_numpy().astype(np.int64)
    repeated = pd.Series(image_ids)[pd.Series(image_ids).duplicated(keep=False)]
    if len(repeated):
        groups = repeated.groupby(repeated).groups
        examples = "; ".join(
            f"{image_id} (rows {', '.join(str(r) for r in list(rows)[:5])})"
            for image_id, rows in list(groups.items())[:5]
        )
        raise ValueError(
            f"manifest {path!r}: image_id must be unique; {len(groups):,} ids repeat: {examples}"
        )
    return image_ids


def _parse_concepts(value: object, row: int, path: str) -> list[str]:
    """One manifest cell as a list of distinct, non-empty concept names (order kept)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        items = value.split(CONCEPT_SEPARATOR)
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    else:
        raise ValueError(
            f"manifest {path!r} row {row}: concepts must be a list of strings or a "
            f"{CONCEPT_SEPARATOR!r}-separated string, got {type(value).__name__} {value!r}"
        )
    concepts: list[str] = []
    for item in items:
        if item is None or (isinstance(item, float) and math.isnan(item)):
            continue
        if not isinstance(item, (str, int, np.integer)):
            raise ValueError(
                f"manifest {path!r} row {row}: concepts must be strings, got {type(item).__name__} {item!r}"
            )
        name = str(item).strip()
        if name and name not in concepts:
            concepts.append(name)
    return concepts


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """ValueError naming the missing columns and the ones found."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} needs columns {', '.join(columns)}; missing {', '.join(missing)} "
            f"(found: {', '.join(map(str, frame.columns))})"
        )
