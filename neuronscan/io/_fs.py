"""Filesystem helpers for run roots on local disk or object stores (fsspec/s3fs).

Credentials come from the usual AWS environment/config and are never logged. ``AWS_ENDPOINT_URL``
points s3fs at an S3-compatible endpoint (MinIO, moto).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "get_fs",
    "join",
    "is_remote",
    "layer_dirname",
    "layer_from_dirname",
    "write_bytes_atomic",
    "write_parquet_atomic",
    "write_json_atomic",
    "read_json",
    "read_parquet",
    "exists",
]


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def get_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for a local path or URI (``s3://bucket/key``)."""
    uri = str(uri)
    options: dict[str, Any] = {}
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        # Listings must see objects written a moment ago by other workers.
        options["use_listings_cache"] = False
        options["skip_instance_cache"] = False
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def join(base: str, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def layer_dirname(layer: str) -> str:
    """File-safe name of a layer (``conv4:mean`` → ``conv4__mean``)."""
    return layer.replace(":", "__").replace("/", "_")


def layer_from_dirname(name: str) -> str:
    return name.replace("__", ":")


def exists(uri: str) -> bool:
    fs, path = get_fs(uri)
    return fs.exists(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a file so that readers see all of it or nothing.

    Local files go to a temporary name in the same folder and are renamed; an object-store PUT is
    already all-or-nothing, so objects are written in one request.
    """
    fs, path = get_fs(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if is_remote(uri):
        fs.pipe_file(path, data)
        return
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}" if parent else f".tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(
    table: pa.Table,
    uri: str,
    *,
    compression: str = "zstd",
    encoded_columns: list[str] | None = None,
) -> None:
    """Write ``table`` as one Parquet file that appears whole or not at all.

    Args:
        encoded_columns: columns that get dictionary encoding and min/max statistics; ``None`` for
            all. Wide float tables (one column per unit) pass ``["image_id"]``: dictionaries and
            statistics of float columns cost ~half the write time and save nothing.
    """
    sink = pa.BufferOutputStream()
    # Every page carries a CRC32 that readers verify (`read_parquet`): flipped bytes are an error, not data.
    if encoded_columns is None:
        pq.write_table(table, sink, compression=compression, write_page_checksum=True)
    else:
        pq.write_table(table, sink, compression=compression, use_dictionary=encoded_columns,
                       write_statistics=encoded_columns, write_page_checksum=True)
    write_bytes_atomic(uri, sink.getvalue().to_pybytes())


def write_json_atomic(obj: Any, uri: str) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(uri: str) -> Any:
    fs, path = get_fs(uri)
    with fs.open(path, "rb") as fh:
        return json.loads(fh.read())


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (or some of its columns), verifying the page checksums neuronscan writes.

    Raises:
        OSError: a page fails its checksum, or the file is not Parquet (pyarrow's own errors).
    """
    fs, path = get_fs(uri)
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns, page_checksum_verification=True)
