"""The config schema: the shipped config is valid, and every kind of mistake stops the run with one line that
names the key and what is allowed."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from kernelcraft.config import DEFAULT_CONFIG_PATH, ConfigError, check_config, merge


@pytest.fixture()
def config():
    with open(DEFAULT_CONFIG_PATH) as fh:
        return yaml.safe_load(fh)


def test_shipped_config_is_valid(config):
    check_config(config)


def test_every_key_of_the_shipped_config_is_commented():
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        if ":" in stripped and not stripped.startswith("{"):
            previous = lines[i - 1].strip() if i else ""
            assert previous.startswith("#"), f"key without a comment: {line!r}"


def _error(config, **changes) -> str:
    bad = merge(config, changes)
    with pytest.raises(ConfigError) as info:
        check_config(bad)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_top_level_key_is_named_with_the_allowed_keys(config):
    msg = _error(config, roundz=3)
    assert "'roundz'" in msg and "rounds" in msg and "allowed keys" in msg


def test_unknown_nested_key_is_named_with_its_parent(config):
    msg = _error(config, tolerance={"atoll": 1e-3})
    assert "'tolerance.atoll'" in msg and "atol, rtol" in msg


def test_bad_enum_value_lists_the_allowed_values(config):
    msg = _error(config, backend="gpu")
    assert "'backend'" in msg and "'gpu'" in msg and "auto, cuda, cpu" in msg


def test_out_of_range_value_names_the_bound(config):
    msg = _error(config, rounds=0)
    assert "'rounds'" in msg and ">= 1" in msg


def test_negative_tolerance_is_rejected(config):
    msg = _error(config, tolerance={"atol": -1.0})
    assert "'tolerance.atol'" in msg and ">= 0" in msg


def test_wrong_type_names_the_expected_type(config):
    msg = _error(config, ideas_per_round="eight")
    assert "'ideas_per_round'" in msg and "integer" in msg


def test_unknown_provider_lists_the_allowed_ones(config):
    bad = copy.deepcopy(config)
    bad["models"]["ideas"][0]["provider"] = "openia"
    with pytest.raises(ConfigError, match=r"'models.ideas.0.provider'.*'openia'.*offline"):
        check_config(bad)


def test_builtin_must_be_all_or_a_list(config):
    msg = _error(config, problems={"builtin": "softmax"})
    assert "'problems.builtin'" in msg and "all" in msg


def test_bad_cuda_arch_is_rejected(config):
    msg = _error(config, build={"cuda_arch": "hopper"})
    assert "'build.cuda_arch'" in msg


def test_missing_required_key_is_named(config):
    bad = copy.deepcopy(config)
    del bad["benchmark"]["iters"]
    with pytest.raises(ConfigError, match=r"'benchmark'.*'iters'"):
        check_config(bad)


def test_the_readme_model_examples_are_valid_configs(config):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    examples = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert len(examples) >= 2
    for text in examples:
        check_config(merge(config, yaml.safe_load(text)))  # with the shipped budget, so prices are checked too


def test_the_manifests_config_digest_names_the_experiment_not_the_key_order(config):
    from kernelcraft.manifest import config_digest

    reordered = dict(reversed(list(copy.deepcopy(config).items())))
    changed = copy.deepcopy(config)
    changed["rounds"] = config["rounds"] + 1
    assert config_digest(config) == config_digest(reordered)
    assert config_digest(config) != config_digest(changed)
    assert len(config_digest(config)) == 64


def test_nested_command_line_values_are_read_as_the_schemas_numbers_and_booleans(config):
    """Snakemake leaves every scalar of a nested --config value a string (YAML's base loader); the schema's
    numbers, integers and booleans are read from them, enums and strings stay as given, and a string that is not
    the wanted type still stops the run with the key named."""
    from kernelcraft.config import coerce_strings, load_schema

    given = merge(config, {"tolerance": {"atol": "1e-4", "rtol": "0.5"}, "verify": {"trials": "4",
                           "reference_precision": "float64"}, "benchmark": {"torch_compile": "false"}})
    coerce_strings(given, load_schema())
    assert given["tolerance"] == {"atol": 1e-4, "rtol": 0.5}
    assert given["verify"]["trials"] == 4 and given["verify"]["reference_precision"] == "float64"
    assert given["benchmark"]["torch_compile"] is False and given["run"] == config["run"]
    check_config(given)
    bad = merge(config, {"verify": {"trials": "4.5"}, "benchmark": {"torch_compile": "1"}})
    coerce_strings(bad, load_schema())
    assert bad["verify"]["trials"] == "4.5" and bad["benchmark"]["torch_compile"] == "1"
    with pytest.raises(ConfigError, match="'benchmark.torch_compile': '1' has the wrong type; expected boolean"):
        check_config(bad)


def test_a_strict_run_is_configured_from_the_command_line(tmp_path):
    """The README's 1e-4 run: nested --config values pass the workflow's own check (a dry run)."""
    import subprocess
    import sys

    snakefile = Path(__file__).resolve().parents[1] / "workflow" / "Snakefile"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "-n", "--directory",
                           str(tmp_path), "--config", "tolerance={atol: 1e-4, rtol: 1e-4}",
                           "verify={reference_precision: float64}", "run=strict",
                           "problems={builtin: [gelu_4096x32768]}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "This was a dry-run" in proc.stdout + proc.stderr
