"""Bad model files (model.name *.pt2 / *.ts, model.checkpoint *.pt / *.pth): one line naming the file and what it is."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch

from neuronscan.cli import main
from neuronscan.errors import ModelError
from neuronscan.models import build_model, load_state_dict_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good files of each kind, and the bad ones made from them (random bytes, empty, text, cut in half)."""
    d = tmp_path_factory.mktemp("model_files")
    tiny = build_model("tinycnn")
    torch.export.save(torch.export.export(tiny.module, (torch.zeros(2, 3, 32, 32),)), str(d / "good.pt2"))
    torch.save(tiny.module.state_dict(), d / "good.pt")
    torch.save(tiny.module.state_dict(), d / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.script(tiny.module).save(str(d / "scripted.ts"))
    random_bytes = os.urandom(4096).replace(b"\x80", b"\x81")  # no pickle protocol byte to start with
    for ext in ("pt2", "pt", "pth", "ts"):
        (d / f"random.{ext}").write_bytes(b"\x00" + random_bytes)
        (d / f"empty.{ext}").write_bytes(b"")
        (d / f"text.{ext}").write_text("not a model\n")
    for good in ("good.pt2", "good.pt"):
        data = (d / good).read_bytes()
        (d / f"truncated_{good}").write_bytes(data[: len(data) // 2])
    (d / "state_dict.pt2").write_bytes((d / "good.pt").read_bytes())
    (d / "folder.pt2").mkdir()
    (d / "folder.pt").mkdir()
    torch.save({"obj": datetime.datetime(2020, 1, 1)}, d / "pickled_object.pt")
    return d


def _one_line_error(call) -> str:
    with pytest.raises(ModelError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name, what", [
    ("random.pt2", "bytes of unrecognised data (neither a zip archive nor a pickle)"),
    ("empty.pt2", "is empty (0 bytes)"),
    ("text.pt2", "is a text file (12 bytes, starting 'not a model')"),
    ("truncated_good.pt2", "is a truncated or corrupt zip archive"),
    ("folder.pt2", "is a folder"),
    ("state_dict.pt2", "is a torch.save checkpoint, not a torch.export archive"),
])
def test_a_bad_export_archive_is_one_error_naming_the_file(files, name, what):
    path = files / name
    message = _one_line_error(lambda: build_model(str(path)))
    assert repr(str(path)) in message and what in message, message
    if name != "state_dict.pt2":
        assert "torch.export.save(" in message  # says how to make a good one
    else:
        assert "model.checkpoint" in message  # a state dict belongs there, with its architecture as model.name


def test_a_bad_export_archive_logs_no_torch_traceback(files, caplog):
    with caplog.at_level("WARNING"), pytest.raises(ModelError):
        build_model(str(files / "truncated_good.pt2"))
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("name, what", [
    ("random.pt", "bytes of unrecognised data (neither a zip archive nor a pickle), not a PyTorch checkpoint"),
    ("random.pth", "bytes of unrecognised data (neither a zip archive nor a pickle), not a PyTorch checkpoint"),
    ("empty.pt", "is empty (0 bytes), not a PyTorch checkpoint"),
    ("text.pt", "is a text file (12 bytes, starting 'not a model'), not a PyTorch checkpoint"),
    ("truncated_good.pt", "is a truncated or corrupt zip archive"),
    ("folder.pt", "is a folder, not a PyTorch checkpoint"),
    ("good.pt2", "is a torch.export archive (.pt2), not a state dict: give it as model.name"),
    ("scripted.ts", "is a TorchScript archive, not a state dict"),
    ("random.ts", "not a PyTorch checkpoint"),
    ("text.ts", "not a PyTorch checkpoint"),
])
def test_a_bad_checkpoint_is_one_error_naming_the_file(files, name, what):
    path = files / name
    message = _one_line_error(lambda: build_model("tinycnn", checkpoint=str(path)))
    assert message.startswith(f"checkpoint {str(path)!r} "), message
    assert what in message, message


def test_a_pickled_object_is_refused_in_one_line_naming_the_global(files):
    message = _one_line_error(lambda: load_state_dict_file(files / "pickled_object.pt"))
    assert "with weights_only=True: Unsupported global: GLOBAL datetime.datetime" in message, message
    assert "\x1b[" not in message  # torch's terminal colours do not travel into the message


@pytest.mark.parametrize("name, what", [
    ("random.ts", "it is 4,097 bytes of unrecognised data"),
    ("empty.ts", "it is empty (0 bytes)"),
    ("text.ts", "it is a text file"),
])
def test_a_garbage_torchscript_name_keeps_the_refusal_and_says_what_the_file_is(files, name, what):
    path = files / name
    message = _one_line_error(lambda: build_model(str(path)))
    assert "cannot probe TorchScript" in message and ".pt2" in message and "package.module:function" in message
    assert f"{str(path)!r} is a TorchScript file (though the file is not TorchScript either: {what}" in message


def test_a_state_dict_given_as_the_model_says_to_use_model_checkpoint(files):
    path = files / "good.pt"
    message = _one_line_error(lambda: build_model(str(path)))
    assert f"{str(path)!r} is a torch.save checkpoint" in message and f"{str(path)!r} as model.checkpoint" in message


def test_good_files_still_load(files):
    tiny = build_model("tinycnn")
    x = torch.rand(2, 3, 32, 32)
    spec = build_model(str(files / "good.pt2"))
    with torch.inference_mode():
        torch.testing.assert_close(spec.module(x), tiny.module(x))
    for name in ("good.pt", "legacy.pt"):
        assert set(load_state_dict_file(files / name)) == set(tiny.module.state_dict())
        build_model("tinycnn", checkpoint=str(files / name))


@pytest.mark.parametrize("args, fragment", [
    (["layers", "{d}/truncated_good.pt2"], "'{d}/truncated_good.pt2' is a truncated or corrupt zip archive"),
    (["layers", "{d}/empty.pt2"], "'{d}/empty.pt2' is empty (0 bytes)"),
    (["validate", str(ROOT / "configs" / "demo.yaml"), "--check-model", "--set", "model.checkpoint={d}/random.pth"],
     "checkpoint '{d}/random.pth' is 4,097 bytes of unrecognised data"),
])
def test_cli_prints_one_line_and_exits_2(files, capsys, args, fragment):
    code = main([a.format(d=files) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment.format(d=files) in err, err
