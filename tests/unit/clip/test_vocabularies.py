"""Built-in vocabularies (builtin:NAME[,NAME...]), their packaging, and resolve_vocabulary."""

from __future__ import annotations

import copy
import sys
import tomllib
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from neuronscan.clip import BUILTIN_VOCABULARIES, builtin_vocabulary, load_vocabulary, resolve_vocabulary
from neuronscan.clip._builtin import DATA_DIR, DEFAULT_BUILTIN, parse_builtin_spec
from neuronscan.config import config_from_dict
from neuronscan.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SIZES = {"colours": 59, "textures": 65, "materials": 59, "shapes": 42, "parts": 94, "scenes": 90, "imagenet": 998}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_each_list_is_clean_distinct_and_described(name):
    words = builtin_vocabulary([name])
    assert len(words) == SIZES[name]
    assert load_vocabulary(words) == words  # already cleaned: no blanks, comments, repeats, stray spaces
    assert all(w == w.strip() and "  " not in w and not w.startswith("#") for w in words)
    assert f"({SIZES[name]}" in BUILTIN_VOCABULARIES[name]


def test_lists_hold_what_their_names_say():
    assert {"red", "blue", "purple", "grey"} <= set(builtin_vocabulary("colours"))
    textures = builtin_vocabulary("textures")
    assert {"striped", "dotted", "chequered", "honeycombed", "zigzagged"} <= set(textures)
    assert {"wood", "glass", "metal", "polished stone"} <= set(builtin_vocabulary("materials"))
    assert {"circle", "triangle", "star", "cross"} <= set(builtin_vocabulary("shapes"))
    assert {"wheel", "eye", "license plate"} <= set(builtin_vocabulary("parts"))
    assert {"beach", "kitchen", "forest"} <= set(builtin_vocabulary("scenes"))


def test_syntax_order_dedupe_aliases_and_spaces():
    colours, shapes = builtin_vocabulary("colours"), builtin_vocabulary("shapes")
    both = load_vocabulary("builtin:colours,shapes")
    assert both == list(dict.fromkeys(colours + shapes))
    assert load_vocabulary("  builtin: colors , shapes, colours ") == both
    assert builtin_vocabulary(["colours", "shapes"]) == both
    assert parse_builtin_spec("builtin:Object_Parts,imagenet1k") == ["parts", "imagenet"]
    assert DEFAULT_BUILTIN == "builtin:colours,textures,materials,shapes,parts,scenes"
    assert len(load_vocabulary(DEFAULT_BUILTIN)) == len(set().union(*(builtin_vocabulary(n) for n in
                                                                        parse_builtin_spec(DEFAULT_BUILTIN))))


def test_errors_name_the_lists():
    with pytest.raises(ValueError, match=r"unknown built-in vocabulary 'colurs'; did you mean 'colours'\?"):
        load_vocabulary("builtin:colurs")
    with pytest.raises(ValueError, match="names no list"):
        load_vocabulary("builtin:")
    with pytest.raises(ValueError, match="Lists: colours, textures, materials"):
        builtin_vocabulary(["zzz"])
    with pytest.raises(ValueError, match="resolve_vocabulary"):
        load_vocabulary("llm")


def test_a_file_and_a_path_object_stay_files(tmp_path, monkeypatch):
    (tmp_path / "words.txt").write_text("red\nbuiltin:colours\n")
    assert load_vocabulary(tmp_path / "words.txt") == ["red", "builtin:colours"]  # entries are never expanded
    with pytest.raises(ValueError, match="does not exist"):
        load_vocabulary(Path("builtin:colours"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llm").write_text("a file named llm\n")
    assert load_vocabulary("llm") == ["a file named llm"]


def test_imagenet_names_come_from_the_packaged_csv():
    words = builtin_vocabulary("imagenet")
    assert words[:3] == ["tench", "goldfish", "great white shark"]
    assert "crane" in words and not any("(n0" in w for w in words)
    repo_copy = ROOT / "configs" / "imagenet_concept_names.csv"
    if repo_copy.is_file():  # the packaged copy is the repository's file, byte for byte
        assert (DATA_DIR / "imagenet_concept_names.csv").read_bytes() == repo_copy.read_bytes()


def test_english_needs_wordfreq(monkeypatch):
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import fails
    with pytest.raises(ValueError, match="pip install wordfreq"):
        builtin_vocabulary("english")
    fake = types.ModuleType("wordfreq")
    fake.top_n_list = lambda lang, n: ["the", "a", "x1", "of", "don't"] + [
        "word" + "".join(chr(97 + (i // 26**k) % 26) for k in range(4)) for i in range(n)
    ]
    monkeypatch.setitem(sys.modules, "wordfreq", fake)
    words = builtin_vocabulary("builtin:english")
    assert len(words) == 20_000 and words[:2] == ["the", "of"]  # one-letter and non-alphabetic words dropped


def test_data_files_are_declared_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["neuronscan"]
    assert "clip/data/*" in patterns
    assert {p.name for p in DATA_DIR.iterdir()} >= {f"{n}.txt" for n in SIZES if n != "imagenet"} | {
        "imagenet_concept_names.csv", "neuronscan-tinyclip.json"}


def test_resolve_vocabulary_sources(tmp_path):
    assert resolve_vocabulary(SimpleNamespace(vocabulary=None), ["red", "red", "circle"]) == ["red", "circle"]
    assert resolve_vocabulary(SimpleNamespace(vocabulary="builtin:shapes")) == builtin_vocabulary("shapes")
    assert resolve_vocabulary(SimpleNamespace(vocabulary=["a", " b "])) == ["a", "b"]
    path = tmp_path / "v.txt"
    path.write_text("x\ny\n")
    assert resolve_vocabulary(SimpleNamespace(vocabulary=str(path))) == ["x", "y"]
    with pytest.raises(ValueError, match="vocabulary_llm"):
        resolve_vocabulary(SimpleNamespace(vocabulary="llm", vocabulary_llm=None))


_BASE = {"data": {"shapes_world": {}}, "model": {"name": "shapesnet", "layers": ["conv4"]}}


def _clip_config(clip: dict):
    raw = copy.deepcopy(_BASE)
    raw["probe"] = {"clip": clip}
    return config_from_dict(raw)


def test_config_accepts_and_checks_builtin_names():
    cfg = _clip_config({"model": "neuronscan-tinyclip", "vocabulary": "builtin:colours,shapes"})
    assert cfg.probe.clip.vocabulary == "builtin:colours,shapes"
    assert resolve_vocabulary(cfg.probe.clip) == load_vocabulary("builtin:colours,shapes")
    with pytest.raises(ConfigError, match=r"probe\.clip\.vocabulary: .*unknown built-in vocabulary 'shape'"):
        _clip_config({"vocabulary": "builtin:colours,shape"})
