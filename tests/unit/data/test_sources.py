"""Listing image folders and manifests, reading blobs, and deriving labels."""

from __future__ import annotations

import gzip
import pickle
import uuid

import botocore.exceptions
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from neuronscan.data import (
    LISTING_SCHEMA,
    DecodeError,
    duplicate_uris,
    labels_from_listing,
    list_image_folder,
    read_blob,
    read_manifest,
    redact_uri,
)
from tests.salted_images import make_manifest_with_missing, write_manifest


def _tree(root, files):
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
    return root


def _assert_listing_dtypes(df):
    assert list(df.columns) == ["image_id", "uri", "concepts"]
    assert df["image_id"].dtype == np.int64
    assert pa.Table.from_pandas(df, schema=LISTING_SCHEMA, preserve_index=False).num_rows == len(df)


# --- list_image_folder -------------------------------------------------------------------------------


def test_folder_listing_is_sorted_classed_and_keeps_non_images(tmp_path):
    _tree(tmp_path, ["dog/b.jpg", "dog/a.PNG", "cat/z.jpg", "cat/readme.txt", "loose.jpg", "cat/sub/deep.jpg",
                     ".DS_Store", "cat/._z.jpg", ".thumbs/t.jpg", "dog/.hidden/x.jpg"])
    df = list_image_folder(str(tmp_path))
    _assert_listing_dtypes(df)
    assert df["image_id"].tolist() == list(range(6))
    relpaths = ["cat/readme.txt", "cat/sub/deep.jpg", "cat/z.jpg", "dog/a.PNG", "dog/b.jpg", "loose.jpg"]
    assert df["uri"].tolist() == [str(tmp_path / rel) for rel in relpaths]
    assert df["concepts"].tolist() == [["cat"], ["cat"], ["cat"], ["dog"], ["dog"], []]


def test_folder_listing_is_deterministic_and_absolute(tmp_path, monkeypatch):
    _tree(tmp_path, [f"c{i % 3}/img{i}.jpg" for i in range(20)])
    monkeypatch.chdir(tmp_path.parent)
    relative = list_image_folder(tmp_path.name)
    absolute = list_image_folder(tmp_path)
    pd.testing.assert_frame_equal(relative, absolute)
    assert all(uri.startswith(str(tmp_path) + "/") for uri in absolute["uri"])


def test_extension_filter_is_opt_in_and_case_insensitive(tmp_path):
    _tree(tmp_path, ["a/x.JPG", "a/y.png", "a/z.txt"])
    assert len(list_image_folder(str(tmp_path))) == 3
    kept = list_image_folder(str(tmp_path), extensions=["jpg", ".PNG"])
    assert [u.rsplit("/", 1)[1] for u in kept["uri"]] == ["x.JPG", "y.png"]
    with pytest.raises(ValueError, match=r"no files under .* with extensions \['.webp'\]"):
        list_image_folder(str(tmp_path), extensions="webp")


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"image folder '.*nope' does not exist"):
        list_image_folder(str(tmp_path / "nope"))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        list_image_folder(str(tmp_path / "file.jpg"))
    empty = tmp_path / "empty"
    _tree(empty, [".DS_Store", "cls/.keep"])
    with pytest.raises(ValueError, match=r"no files under '.*empty'"):
        list_image_folder(str(empty))
    with pytest.raises(TypeError, match="fsspec filesystem"):
        list_image_folder(str(tmp_path), filesystem="s3")


def test_symlinked_tree_dangling_links_are_inputs_and_linked_folders_are_followed(tmp_path, caplog):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    _tree(root, ["dog/a.jpg"])
    _tree(elsewhere, ["b.jpg"])
    (root / "dog" / "gone.jpg").symlink_to(tmp_path / "nowhere" / "gone.jpg")  # dangling
    (root / "dog" / "gone.txt").symlink_to(tmp_path / "nowhere" / "gone.txt")  # dangling, not an image
    (root / "dog" / "self.jpg").symlink_to("self.jpg")  # loops on itself
    (root / "cat").mkdir()
    (root / "cat" / "good.jpg").symlink_to(root / "dog" / "a.jpg")  # a link to a real image
    (root / "cat" / "up").symlink_to("..")  # a folder loop: back to ROOT
    (root / "cat" / "top").symlink_to("/")  # a folder above ROOT: also a loop
    (root / "bird").symlink_to(elsewhere)  # a symlinked class folder
    (root / ".hidden_link.jpg").symlink_to(tmp_path / "nowhere")

    df = list_image_folder(str(root))
    _assert_listing_dtypes(df)
    relpaths = ["bird/b.jpg", "cat/good.jpg", "dog/a.jpg", "dog/gone.jpg", "dog/gone.txt", "dog/self.jpg"]
    assert df["uri"].tolist() == [str(root / rel) for rel in relpaths]
    assert df["concepts"].tolist() == [["bird"], ["cat"], ["dog"], ["dog"], ["dog"], ["dog"]]
    assert sum("a symlink to a folder it is inside (a loop)" in r.getMessage() for r in caplog.records) == 2

    # the extension filter treats a link like any file, by the link's own name
    kept = list_image_folder(str(root), extensions=[".jpg"])
    assert [u.rsplit("/", 2)[-2] + "/" + u.rsplit("/", 1)[-1] for u in kept["uri"]] == [
        "bird/b.jpg", "cat/good.jpg", "dog/a.jpg", "dog/gone.jpg", "dog/self.jpg"]

    # every listed row is read or fails with a reason: processed + failed == inputs
    outcomes = {}
    for rel, uri in zip(relpaths, df["uri"], strict=True):
        try:
            outcomes[rel] = read_blob(uri)
        except DecodeError as exc:
            outcomes[rel] = str(exc)
    assert outcomes["cat/good.jpg"] == b"dog/a.jpg" and outcomes["bird/b.jpg"] == b"b.jpg"
    assert outcomes["dog/gone.jpg"] == (
        f"missing: broken symlink: '{root}/dog/gone.jpg' -> '{tmp_path}/nowhere/gone.jpg' does not exist")
    assert outcomes["dog/self.jpg"] == f"missing: broken symlink: '{root}/dog/self.jpg' -> 'self.jpg' is a symlink loop"


def test_a_root_that_is_a_symlink_is_listed_under_the_link(tmp_path):
    _tree(tmp_path / "real", ["dog/a.jpg"])
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert list_image_folder(str(tmp_path / "link"))["uri"].tolist() == [str(tmp_path / "link" / "dog" / "a.jpg")]


@pytest.fixture
def memory_bucket():
    fs = fsspec.filesystem("memory")
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    yield fs, bucket
    fs.rm(f"/{bucket}", recursive=True)


def test_fsspec_uris_keep_their_scheme_and_read_back(memory_bucket):
    fs, bucket = memory_bucket
    for rel in ["probe/dog/a.jpg", "probe/cat/b.jpg", "probe/.DS_Store", "other/c.jpg"]:
        fs.pipe(f"/{bucket}/{rel}", rel.encode())
    root = f"memory://{bucket}/probe/"
    df = list_image_folder(root)
    assert df["uri"].tolist() == [f"memory://{bucket}/probe/cat/b.jpg", f"memory://{bucket}/probe/dog/a.jpg"]
    assert df["concepts"].tolist() == [["cat"], ["dog"]]
    cache = {}
    assert [read_blob(u, cache) for u in df["uri"]] == [b"probe/cat/b.jpg", b"probe/dog/a.jpg"]
    assert list(cache) == ["memory"]

    with_fs = list_image_folder(f"/{bucket}/probe", filesystem=fs)
    assert all(u.startswith("memory://") for u in with_fs["uri"])
    assert [read_blob(u) for u in with_fs["uri"]] == [b"probe/cat/b.jpg", b"probe/dog/a.jpg"]


# --- read_manifest --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_manifest_formats_keep_every_row(tmp_path, suffix):
    expected = make_manifest_with_missing(tmp_path)
    df = read_manifest(str(write_manifest(expected, tmp_path / f"manifest{suffix}")))
    _assert_listing_dtypes(df)
    assert df["image_id"].tolist() == expected["image_id"].tolist()
    assert df["uri"].isna().tolist() == expected["uri"].isna().tolist() == [False] * 5 + [True, False]
    assert df["uri"].dropna().tolist() == expected["uri"].dropna().tolist()
    assert df["concepts"].tolist() == [list(c) for c in expected["concepts"]]


def test_manifest_without_ids_gets_sequential_ids_and_relative_uris_resolve(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.csv").write_text("uri,concepts,extra\nimg/a.jpg, dog | animal ,1\n"
                                                 "/abs/b.jpg,,2\ns3://bucket/c.jpg,NA|dog|dog,3\n  ,,4\n")
    df = read_manifest(tmp_path / "m" / "manifest.csv")
    assert df["image_id"].tolist() == [0, 1, 2, 3]
    assert df["uri"].tolist()[:3] == [str(tmp_path / "m" / "img" / "a.jpg"), "/abs/b.jpg", "s3://bucket/c.jpg"]
    assert pd.isna(df["uri"].iloc[3])
    assert df["concepts"].tolist() == [["dog", "animal"], [], ["NA", "dog"], []]


def test_compressed_and_remote_manifests(tmp_path, memory_bucket):
    path = tmp_path / "manifest.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"uri": "a.jpg", "concepts": ["x"]}\n{"uri": null, "concepts": null}\n'))
    df = read_manifest(str(path))
    assert df["uri"].tolist()[0] == str(tmp_path / "a.jpg") and df["concepts"].tolist() == [["x"], []]
    fs, bucket = memory_bucket
    fs.pipe(f"/{bucket}/lists/m.csv", b"uri\nimages/a.jpg\n")
    assert read_manifest(f"memory://{bucket}/lists/m.csv")["uri"].tolist() == [f"memory://{bucket}/lists/images/a.jpg"]


def test_manifest_without_uri_column_names_the_columns_found(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.jpg,dog\n")
    with pytest.raises(ValueError, match="has no 'uri' column; found columns: path, label"):
        read_manifest(str(path))
    parquet = tmp_path / "m.parquet"
    pd.DataFrame({"url": ["a"]}).to_parquet(parquet)
    with pytest.raises(ValueError, match="found columns: url"):
        read_manifest(str(parquet))


def test_duplicate_image_ids_are_listed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(f'{{"uri": "u{i}", "image_id": {i % 3}}}\n' for i in range(5)))
    with pytest.raises(ValueError, match=r"2 ids repeat: 0 \(rows 0, 3\); 1 \(rows 1, 4\)"):
        read_manifest(str(path))


@pytest.mark.parametrize("ids, message", [("7,", "empty or not numbers"), ("7,x", "row 1: 'x'"),
                                          ("7,1.5", "fractions")])
def test_bad_image_ids(tmp_path, ids, message):
    first, second = ids.split(",")
    path = tmp_path / "m.csv"
    path.write_text(f"uri,image_id\na,{first}\nb,{second}\n")
    with pytest.raises(ValueError, match=message):
        read_manifest(str(path))


def test_manifest_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(str(tmp_path / "missing.csv"))
    (tmp_path / "m.txt").write_text("uri\na\n")
    with pytest.raises(ValueError, match=r"expected a .parquet, .csv or .jsonl"):
        read_manifest(str(tmp_path / "m.txt"))
    (tmp_path / "empty.csv").write_text("uri\n")
    with pytest.raises(ValueError, match="has no rows"):
        read_manifest(str(tmp_path / "empty.csv"))
    (tmp_path / "bad.jsonl").write_text('{"uri": "a"}\n{not json\n')
    with pytest.raises(ValueError, match="cannot parse manifest .* as JSONL"):
        read_manifest(str(tmp_path / "bad.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"uri": "a", "concepts": 5}\n')
    with pytest.raises(ValueError, match="row 0: concepts must be a list of strings"):
        read_manifest(str(tmp_path / "c.jsonl"))


def test_duplicate_uris_are_kept_and_reported(tmp_path):
    expected = make_manifest_with_missing(tmp_path)
    df = read_manifest(str(write_manifest(expected, tmp_path / "m.parquet")))
    dups = duplicate_uris(df)
    assert dups["image_id"].tolist() == [100, expected["image_id"].iloc[-1]]
    assert dups["uri"].nunique() == 1
    assert duplicate_uris(df.iloc[1:4]).empty


# --- labels ---------------------------------------------------------------------------------------


def test_labels_from_listing_is_long_format_without_repeats(tmp_path):
    listing = pd.DataFrame({"image_id": np.array([5, 6, 7], dtype=np.int64),
                            "concepts": pd.Series([["dog", "animal", "dog"], [], None], dtype=object)})
    labels = labels_from_listing(listing)
    assert labels.to_dict("records") == [{"image_id": 5, "concept": "dog"}, {"image_id": 5, "concept": "animal"}]
    assert labels["image_id"].dtype == np.int64
    _tree(tmp_path, ["a/1.jpg", "b/2.jpg", "3.jpg"])
    labels = labels_from_listing(list_image_folder(str(tmp_path)))
    assert labels.to_dict("records") == [{"image_id": 1, "concept": "a"}, {"image_id": 2, "concept": "b"}]
    empty = labels_from_listing(pd.DataFrame({"image_id": np.array([0], dtype=np.int64), "concepts": [[]]}))
    assert list(empty.columns) == ["image_id", "concept"] and len(empty) == 0
    with pytest.raises(ValueError, match="missing concepts"):
        labels_from_listing(pd.DataFrame({"image_id": [0]}))


# --- read_blob ------------------------------------------------------------------------------------


def test_read_blob_reads_and_fails_as_missing(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x00\x01")
    assert read_blob(str(tmp_path / "a.bin")) == b"\x00\x01"
    for uri in [str(tmp_path / "nope.jpg"), None, "", "  ", float("nan")]:
        with pytest.raises(DecodeError) as info:
            read_blob(uri)
        assert info.value.reason == "missing"
    with pytest.raises(DecodeError, match="nope.jpg' does not exist"):
        read_blob(str(tmp_path / "nope.jpg"))
    with pytest.raises(DecodeError) as info:
        read_blob(str(tmp_path))
    assert info.value.reason == "not_a_file"


def test_read_blob_names_a_broken_symlink_and_reads_through_a_good_one(tmp_path):
    (tmp_path / "real.bin").write_bytes(b"ok")
    (tmp_path / "good.jpg").symlink_to(tmp_path / "real.bin")
    (tmp_path / "dangling.jpg").symlink_to("gone/missing.jpg")
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    assert read_blob(str(tmp_path / "good.jpg")) == b"ok"
    for uri in (str(tmp_path / "dangling.jpg"), f"file://{tmp_path}/dangling.jpg"):
        with pytest.raises(DecodeError) as info:
            read_blob(uri)
        assert info.value.reason == "missing"
        assert str(info.value) == f"missing: broken symlink: {uri!r} -> 'gone/missing.jpg' does not exist"
    with pytest.raises(DecodeError) as info:
        read_blob(str(tmp_path / "a.jpg"))
    assert (info.value.reason, info.value.message) == (
        "missing", f"broken symlink: '{tmp_path}/a.jpg' -> 'b.jpg' is a symlink loop")
    # the reason survives pickling (Ray ships errors between processes)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.reason, str(again)) == ("missing", str(info.value))


def test_read_blob_uses_a_preseeded_filesystem(memory_bucket):
    fs, bucket = memory_bucket
    fs.pipe(f"/{bucket}/k.jpg", b"from memory")
    assert read_blob(f"/{bucket}/k.jpg", {"file": fs}) == b"from memory"


class _NoSuchKeyFileSystem(MemoryFileSystem):
    protocol = "nosuchkeytest"

    def cat_file(self, path, start=None, end=None, **kwargs):
        error = {"Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."}}
        raise botocore.exceptions.ClientError(error, "GetObject")


def test_object_store_no_such_key_is_missing():
    with pytest.raises(DecodeError) as info:
        read_blob("nosuchkeytest://bucket/k.jpg", {"nosuchkeytest": _NoSuchKeyFileSystem()})
    assert info.value.reason == "missing"


def test_read_errors_never_show_credentials():
    with pytest.raises(DecodeError) as info:
        read_blob("nosuchproto://AKIDEXAMPLE:hunter2@bucket/k.jpg")
    assert info.value.reason == "read_error"
    assert "hunter2" not in str(info.value) and "AKIDEXAMPLE" not in str(info.value)
    assert redact_uri("s3://key:secret@bucket/a.jpg") == "s3://***@bucket/a.jpg"
    assert redact_uri("https://host/a.jpg?X-Amz-Signature=abc") == "https://host/a.jpg?<redacted>"
    assert redact_uri("/data/a.jpg") == "/data/a.jpg"
