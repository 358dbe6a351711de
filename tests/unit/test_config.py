"""Config validation: every error at once, with file and dotted key; overrides; every shipped YAML loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronscan.config import RunConfig, apply_overrides, config_from_dict, load_config, parse_overrides
from neuronscan.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {"data": {"folder": "imgs"}, "model": {"name": "resnet18", "layers": ["layer4"]}}


def test_minimal_config_gets_defaults():
    cfg = config_from_dict(MINIMAL)
    assert isinstance(cfg, RunConfig)
    assert cfg.probe.num_gpus == 0.0
    assert cfg.score.alpha == 0.05
    assert cfg.model.reduce == ["mean"]


def test_every_problem_reported_with_file_and_dotted_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "data:\n  folder: x\n  foldr: y\nmodle: {}\nmodel:\n  name: r\n  layers: [a]\n  reduce: [avg]\n"
        "probe:\n  batch_size: 0\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: 4 problems")
    assert "data.foldr: unknown key; did you mean 'folder'?" in msg
    assert "modle: unknown key; did you mean 'model'?" in msg
    assert "model.reduce[0]:" in msg and "'avg'" in msg
    assert "probe.batch_size:" in msg
    assert len(info.value.problems) == 4


def test_missing_required_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"folder": "x"}}, "c.yaml")
    assert "model: required key is missing" in str(info.value)


def test_exactly_one_data_source():
    with pytest.raises(ConfigError, match="exactly one of data.folder, data.manifest, data.shapes_world"):
        config_from_dict({**MINIMAL, "data": {"folder": "a", "manifest": "b.csv"}})
    with pytest.raises(ConfigError, match="got none"):
        config_from_dict({**MINIMAL, "data": {}})


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  folder: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/config.yaml")


def test_overrides_parse_yaml_values_and_apply():
    ov = parse_overrides(["probe.batch_size=32", "model.layers=[conv1, conv2]", "score.alpha=0.01", "run.run_id=x"])
    assert ov == {"probe.batch_size": 32, "model.layers": ["conv1", "conv2"], "score.alpha": 0.01, "run.run_id": "x"}
    cfg = config_from_dict(apply_overrides(MINIMAL, ov))
    assert cfg.probe.batch_size == 32 and cfg.model.layers == ["conv1", "conv2"] and cfg.score.alpha == 0.01
    assert MINIMAL["model"]["layers"] == ["layer4"], "overrides must not mutate the input"


def test_override_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["probe.batch_size"])
    with pytest.raises(ConfigError, match="probe.batch_size"):
        load_config(ROOT / "configs" / "demo.yaml", {"probe.batch_size": "many"})


def test_run_id_must_be_a_plain_name():
    with pytest.raises(ConfigError, match="run.run_id"):
        config_from_dict({**MINIMAL, "run": {"run_id": "../escape"}})


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_says_how_to_run_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# neuronscan "), f"{path.name} must start with a comment showing its command"
    load_config(path)


def test_model_normalisation_is_checked():
    cfg = config_from_dict({**MINIMAL, "model": {**MINIMAL["model"], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1]}})
    assert cfg.model.mean == (0.5, 0.5, 0.5) and cfg.model.std == (0.25, 0.5, 1.0)
    assert config_from_dict(MINIMAL).model.mean is None
    for bad, key in (({"std": [0.2, 0, 0.2]}, "model.std"), ({"mean": [0.5, 0.5]}, "model.mean"),
                     ({"std": ["x", 1, 1]}, "model.std")):
        with pytest.raises(ConfigError, match=key):
            config_from_dict({**MINIMAL, "model": {**MINIMAL["model"], **bad}})


@pytest.mark.parametrize("extra, message", [
    ({"mean": [0.5, 0.5]}, "model.mean: Value error, must be 3 numbers (R, G, B) on the 0..1 pixel scale, "
                           "e.g. [0.485, 0.456, 0.406] (got [0.5, 0.5])"),
    ({"mean": 0.5}, "model.mean: Value error, must be 3 numbers (R, G, B)"),
    ({"std": [True, 1, 1]}, "model.std: Value error, must be 3 numbers (R, G, B)"),
    ({"std": [0.2, -0.1, 0.2]}, "model.std: Value error, every std must be > 0 (it divides the pixels)"),
    ({"mean": [float("nan"), 0.4, 0.4]}, "model.mean: Value error, must be finite numbers"),
    ({"mean": [123.675, 116.28, 103.53]}, "these look like 0..255 values: divide them by 255"),
    ({"std": [58.395, 57.12, 57.375]}, "model.std: Value error, must be on the 0..1 pixel scale"),
])
def test_model_normalisation_messages_say_what_is_expected(extra, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, "model": {**MINIMAL["model"], **extra}})
    assert message in str(info.value)


def test_model_mean_and_std_are_independent_and_accept_yaml_strings():
    cfg = config_from_dict({**MINIMAL, "model": {**MINIMAL["model"], "std": ["1e-1", 0.2, 1]}})
    assert (cfg.model.mean, cfg.model.std) == (None, (0.1, 0.2, 1.0))
    cfg = config_from_dict({**MINIMAL, "model": {**MINIMAL["model"], "mean": [0, 1, 0.5]}})
    assert (cfg.model.mean, cfg.model.std) == ((0.0, 1.0, 0.5), None)


def test_a_key_given_twice_is_an_error_not_the_last_one_wins(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("data: {folder: imgs}\nmodel:\n  name: resnet18\n  layers: [layer4]\n  name: resnet50\n")
    with pytest.raises(ConfigError, match=r"line 5.*key 'name' appears twice \(first on line 3\)"):
        load_config(path)
    path.write_text("data: {folder: imgs}\nmodel: {name: resnet18, layers: [layer4]}\nmodel: {name: x, layers: [y]}\n")
    with pytest.raises(ConfigError, match="key 'model' appears twice"):
        load_config(path)


@pytest.mark.parametrize("section, key, value, problem", [
    ("probe", "batch_size", True, "probe.batch_size: expected an integer, got true"),
    ("probe", "batch_size", 2.5, "probe.batch_size: expected an integer, got 2.5"),
    ("probe", "batch_size", 32.0, "probe.batch_size: expected an integer, got 32.0 (write 32)"),
    ("probe", "batch_size", "32", 'probe.batch_size: expected an integer, got "32" (a quoted string: write it '
                                  "without quotes)"),
    ("probe", "autocast", "yes", 'probe.autocast: expected true or false, got "yes" (write true or false)'),
    ("probe", "autocast", 1, "probe.autocast: expected true or false, got 1 (write true or false)"),
    ("probe", "channels_last", "false", 'probe.channels_last: expected true or false, got "false" (a quoted string: '
                                        "write false without quotes)"),
    ("score", "alpha", "0.05", 'score.alpha: expected a number, got "0.05" (a quoted string: write it without '
                               "quotes)"),
    ("score", "alpha", True, "score.alpha: expected a number, got true"),
    ("probe", "num_gpus", float("inf"), "probe.num_gpus: expected a finite number, got inf"),
    ("data", "limit", False, "data.limit: expected an integer, got false"),
    ("ray", "num_cpus", 1.5, "ray.num_cpus: expected an integer, got 1.5"),
])
def test_numbers_and_switches_are_strict_and_the_error_names_the_key(section, key, value, problem):
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, section: {key: value}}, "c.yaml")
    assert info.value.problems == [problem]


def test_an_integer_is_a_number_for_float_keys():
    cfg = config_from_dict({**MINIMAL, "score": {"min_auc": 1, "cpus_per_task": 2}, "probe": {"num_gpus": 1}})
    assert cfg.score.min_auc == 1.0 and isinstance(cfg.score.min_auc, float)
    assert cfg.score.cpus_per_task == 2.0 and cfg.probe.num_gpus == 1.0


def test_strict_keys_read_from_yaml_and_from_set(tmp_path):
    path = tmp_path / "strict.yaml"
    path.write_text("data: {folder: imgs}\nmodel: {name: resnet18, layers: [layer4]}\n"
                    "probe: {batch_size: true, autocast: \"yes\", num_gpus: 0}\nscore: {alpha: \"0.05\", min_auc: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "probe.batch_size: expected an integer, got true",
        'probe.autocast: expected true or false, got "yes" (write true or false)',
        'score.alpha: expected a number, got "0.05" (a quoted string: write it without quotes)',
    ]
    path.write_text("data: {folder: imgs}\nmodel: {name: resnet18, layers: [layer4]}\nscore: {alpha: 1e-3}\n")
    assert load_config(path).score.alpha == 0.001  # YAML 1.1 would read 1e-3 as a string
    ov = parse_overrides(["probe.batch_size=32", "probe.autocast=false", "score.alpha=1e-2", "score.min_auc=1",
                          "probe.num_gpus=0.5", "data.limit=10"])
    assert ov == {"probe.batch_size": 32, "probe.autocast": False, "score.alpha": 0.01, "score.min_auc": 1,
                  "probe.num_gpus": 0.5, "data.limit": 10}
    cfg = load_config(path, ov)
    assert (cfg.probe.batch_size, cfg.probe.autocast, cfg.score.alpha, cfg.score.min_auc) == (32, False, 0.01, 1.0)
    with pytest.raises(ConfigError) as info:
        load_config(path, parse_overrides(["probe.batch_size=true", "score.alpha='0.05'"]))
    assert info.value.problems == [
        "probe.batch_size: expected an integer, got true",
        'score.alpha: expected a number, got "0.05" (a quoted string: write it without quotes)',
    ]


def test_a_refused_credential_like_value_is_never_echoed():
    """A key pasted where the name of its environment variable belongs is refused without being printed."""
    from neuronscan.errors import ConfigError

    secret = "sk-live-0123456789abcdef"
    raw = {"data": {"folder": "."}, "model": {"name": "resnet18", "layers": ["layer4"]},
           "probe": {"clip": {"vocabulary": "llm",
                              "vocabulary_llm": {"url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": secret}}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    text = str(err.value)
    assert "api_key_env" in text and secret not in text and "not shown" in text


def test_a_recorded_config_with_a_disabled_describe_section_loads_again():
    """run.json records every field; a disabled describe section's top_m above probe.topk is no error."""
    raw = {"data": {"folder": "."}, "model": {"name": "resnet18", "layers": ["layer4"]}, "probe": {"topk": 4}}
    recorded = config_from_dict(raw).model_dump(mode="json")
    recorded["describe"]["top_m"] = 5
    assert config_from_dict(recorded).probe.topk == 4
    recorded["describe"]["enabled"] = True
    recorded["probe"]["clip"] = {"model": "neuronscan-tinyclip"}
    with pytest.raises(ConfigError, match="describe.top_m"):
        config_from_dict(recorded)


def test_clip_method_defaults_to_correlation_and_refuses_others():
    base = MINIMAL
    cfg = config_from_dict({**base, "probe": {"clip": {"model": "neuronscan-tinyclip"}}})
    assert cfg.probe.clip.method == "correlation"
    cfg = config_from_dict({**base, "probe": {"clip": {"model": "neuronscan-tinyclip", "method": "soft_wpmi"}}})
    assert cfg.probe.clip.method == "soft_wpmi"
    with pytest.raises(ConfigError, match=r"probe\.clip\.method"):
        config_from_dict({**base, "probe": {"clip": {"model": "neuronscan-tinyclip", "method": "cosine"}}})


def test_score_executor_defaults_to_ray_and_refuses_others():
    cfg = config_from_dict(MINIMAL)
    assert cfg.score.executor == "ray" and cfg.score.local_threads is None
    cfg = config_from_dict({**MINIMAL, "score": {"executor": "local", "local_threads": 3}})
    assert (cfg.score.executor, cfg.score.local_threads) == ("local", 3)
    with pytest.raises(ConfigError, match=r"score\.executor"):
        config_from_dict({**MINIMAL, "score": {"executor": "dask"}})
    with pytest.raises(ConfigError, match=r"score\.local_threads"):
        config_from_dict({**MINIMAL, "score": {"local_threads": 0}})
