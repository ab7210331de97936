"""Run configuration: schema check with one-line errors, and the few values resolved at start.

The Snakefile calls :func:`check_config` before Snakemake's own ``validate`` so that a wrong key or value stops the
run with a single line naming the key and what is allowed, instead of a multi-line jsonschema dump.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# The default experiment, its schema and the prompt and report templates ship inside the package, so a regular
# (non-editable) install finds them; a checkout's config.yaml, workflow/schemas and workflow/templates are links
# to these same files (one source of truth; tests/test_package_data.py).
DATA_DIR = Path(__file__).resolve().parent / "data"
SCHEMA_PATH = DATA_DIR / "config.schema.yaml"
DEFAULT_CONFIG_PATH = DATA_DIR / "config.yaml"
TEMPLATES_DIR = DATA_DIR / "templates"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line naming the key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _key_path(error: Any) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error: Any) -> str:
    """Turn one jsonschema error into 'config key X: <what is wrong>; <what is allowed>'."""
    key = _key_path(error)
    validator = error.validator
    schema = error.schema
    if validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        where = f"config key '{key}.{extra[0]}'" if key != "<top level>" else f"config key '{extra[0]}'"
        return f"{where} is not a known key; allowed keys here: {allowed}"
    if validator == "required":
        return f"config key '{key}' is missing a required entry: {error.message}"
    if validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return f"config key '{key}': {error.instance!r} is not allowed; allowed values: {allowed}"
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[validator]
        return f"config key '{key}': {error.instance!r} is out of range; it must be {bound} {error.validator_value}"
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"config key '{key}': {error.instance!r} has the wrong type; expected {expected}"
    if validator == "pattern":
        return f"config key '{key}': {error.instance!r} does not match the allowed form {error.validator_value}"
    if validator == "oneOf" and key == "problems.builtin":
        return f"config key '{key}': {error.instance!r} is not allowed; use \"all\" or a list of built-in ids"
    return f"config key '{key}': {error.message}"


def check_config(config: dict, schema: dict | None = None) -> None:
    """Raise :class:`ConfigError` with one line for the first (deepest) schema violation."""
    import jsonschema

    schema = schema if schema is not None else load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (-len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_describe(errors[0]))
    for role, ensemble in config["models"].items():
        if not ensemble:
            raise ConfigError(f"config key 'models.{role}' is empty; list at least one model")
    check_models(config)
    check_seed_bank(config)


def check_seed_bank(config: dict) -> None:
    """Every seed-bank directory exists and every file in it reads (search/seed_bank.py), before any job runs."""
    from kernelcraft.search.seed_bank import SeedBankError, bank_dirs, load_bank

    try:
        load_bank(bank_dirs(config))
    except SeedBankError as err:
        raise ConfigError(str(err)) from None


def check_models(config: dict) -> None:
    """What the schema cannot say about model entries: the API must match the provider, a self-hosted endpoint
    needs its URL, and with a budget every paid model needs a price (else its spending would be invisible)."""
    from kernelcraft.llm.cost import missing_prices
    from kernelcraft.llm.models import ALLOWED_APIS

    for role, ensemble in config["models"].items():
        for i, entry in enumerate(ensemble):
            where = f"config key 'models.{role}.{i}"
            provider = entry["provider"]
            api = entry.get("api")
            if api is not None and provider in ALLOWED_APIS and api not in ALLOWED_APIS[provider]:
                allowed = ", ".join(ALLOWED_APIS[provider])
                raise ConfigError(f"{where}.api': {api!r} is not an API of provider {provider}; allowed: {allowed}")
            if provider == "openai_compatible" and not entry.get("base_url"):
                raise ConfigError(f"{where}' (openai_compatible/{entry['model']}) needs base_url, the server's URL, "
                                  f"e.g. base_url: http://localhost:8000/v1")
    llm = config.get("llm") or {}
    if llm.get("budget_usd") is not None:
        entries = [e for ensemble in config["models"].values() for e in ensemble]
        missing = missing_prices(entries, config.get("prices") or {})
        if missing:
            e = missing[0]
            raise ConfigError(f"config key 'prices' has no price for model {e['model']!r} ({e['provider']}) but "
                              f"llm.budget_usd is set; add prices.{e['model']}: {{input: USD, output: USD}} (per "
                              f"million tokens; 0 for a free local model) or set llm.budget_usd: null")


_SCALARS = {"number": (int, float), "integer": (int,), "boolean": (bool,), "null": (type(None),)}


def coerce_strings(config: Any, schema: dict) -> Any:
    """``config`` with the strings the schema wants as numbers, booleans or null read as YAML scalars, nested
    dicts and lists changed in place. Snakemake reads a nested ``--config`` value (``tolerance='{atol: 1e-4}'``)
    with YAML's base loader, which leaves every scalar inside a string; a top-level one it converts itself."""
    if isinstance(config, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, value in config.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                config[key] = coerce_strings(value, sub)
        return config
    if isinstance(config, list) and isinstance(schema.get("items"), dict):
        config[:] = [coerce_strings(v, schema["items"]) for v in config]
        return config
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    wanted = tuple(t for name in types if name in _SCALARS for t in _SCALARS[name])
    if isinstance(config, str) and wanted and "string" not in types:
        for read in (int, float, yaml.safe_load):  # float() too: YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = read(config)
            except (ValueError, yaml.YAMLError):
                continue
            if isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted):
                return value
    return config


def exit_on_bad_config(config: dict) -> None:
    """For the Snakefile: stop with one line, before any job, when the config is wrong (after reading the
    scalars of nested command-line values as the schema's types)."""
    try:
        schema = load_schema()
        coerce_strings(config, schema)
        check_config({k: v for k, v in config.items() if not k.startswith("_")}, schema)
    except ConfigError as err:
        raise SystemExit(f"kernelcraft: {err}") from None


def load_config(path: Path = DEFAULT_CONFIG_PATH, overrides: dict | None = None) -> dict:
    """Read a config file, apply nested overrides and check it (for use outside Snakemake, e.g. tests)."""
    with open(path) as fh:
        config = yaml.safe_load(fh)
    if overrides:
        config = merge(config, overrides)
    check_config(config)
    return config


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_backend(requested: str) -> str:
    """``auto`` means cuda when a GPU is visible to this process, else cpu."""
    if requested != "auto":
        return requested
    from kernelcraft.harness.build.gpu import visible_cuda_devices

    return "cuda" if visible_cuda_devices() > 0 else "cpu"


def resolve_size(requested: str, backend: str) -> str:
    """``auto`` means the published sizes on a GPU and the small ones on a CPU."""
    if requested != "auto":
        return requested
    return "full" if backend == "cuda" else "small"
