"""What a model or checkpoint file on disk is, read from its first bytes and zip listing (nothing is unpickled).

`file_kind` lets the loaders say what is wrong with a file in one line (empty, truncated, text, a state dict
where an export archive was expected) before torch raises an internal error about zip central directories.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

__all__ = ["file_kind", "describe", "torch_error_summary"]

_ZIP_MAGIC = b"PK"
_PICKLE_PROTO = b"\x80"  # pickle protocol >= 2; torch.save's legacy (non-zip) format starts so


def file_kind(path: str | Path) -> str:
    """One of ``missing``, ``folder``, ``not a file``, ``empty``, ``export`` (a torch.export archive),
    ``torchscript``, ``torch.save`` (a zip written by torch.save), ``zip`` (another zip archive),
    ``bad zip`` (truncated or corrupt), ``pickle`` (torch.save's legacy format or a plain pickle),
    ``text`` or ``binary`` (neither a zip archive nor a pickle).
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        return "folder"
    if not path.is_file():
        return "not a file"
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "not a file"
    if not head:
        return "empty"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "bad zip"
        inner = {n.split("/", 1)[-1] for n in names}  # each archive keeps its records under one top folder
        if "archive_format" in inner or "version" in names:  # torch.export.save (2.8+ and the older zip layout)
            return "export"
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            return "torchscript"
        if "data.pkl" in inner:
            return "torch.save"
        return "zip"
    if head.startswith(_ZIP_MAGIC):
        return "bad zip"  # a zip's directory is at its end: a cut-off copy starts right and has none
    if head.startswith(_PICKLE_PROTO):
        return "pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text" if all(ch.isprintable() or ch in "\r\n\t" for ch in text) else "binary"


def describe(path: str | Path, kind: str) -> str:
    """``kind`` in words, for a message about ``path``."""
    path = Path(path)
    size = path.stat().st_size if kind not in ("missing", "folder", "not a file") else 0
    if kind == "text":
        first = path.read_bytes()[:40].decode("utf-8", "replace").splitlines()[0] if size else ""
        return f"a text file ({size:,} bytes, starting {first[:30]!r})"
    return {
        "missing": "does not exist",
        "folder": "a folder",
        "not a file": "not a regular file",
        "empty": "empty (0 bytes)",
        "bad zip": f"a truncated or corrupt zip archive ({size:,} bytes; an interrupted download or copy?)",
        "binary": f"{size:,} bytes of unrecognised data (neither a zip archive nor a pickle)",
        "zip": "a zip archive that neither torch.save nor torch.export wrote",
        "pickle": "a pickle (torch.save's legacy format)",
        "torch.save": "a torch.save checkpoint",
        "torchscript": "a TorchScript archive",
        "export": "a torch.export archive",
    }.get(kind, kind)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def torch_error_summary(exc: BaseException, limit: int = 240) -> str:
    """The useful part of a torch load error, on one line (torch's own messages run to a paragraph)."""
    text = _ANSI.sub("", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:  # weights_only refusals: the line that names the global or the bad opcode
        text = text.split(marker, 1)[1]
        text = re.split(r"Please use|Check the documentation", text, maxsplit=1)[0]
    text = text.split(" This is an internal miniz error", 1)[0]
    text = " ".join(text.split()).strip(" .")
    if not text:
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
