"""Model configuration: the default ensemble (o3 + Gemini 2.5 Pro) falls back to the offline proposer, loudly,
when a key is missing; llm.fallback: error stops instead; entries are checked for what the schema cannot say;
keys never reach candidate processes; the retry arithmetic."""

from __future__ import annotations

import copy
import email.utils
import random

import pytest
import yaml

from kernelcraft.config import DEFAULT_CONFIG_PATH, ConfigError, check_config, merge
from kernelcraft.context import RESOLVED_KEY, RunContext, resolve, resolve_models, resolve_or_exit
from kernelcraft.harness.sandbox.env import scrubbed_env
from kernelcraft.llm.models import DEFAULT_KEY_ENV
from kernelcraft.llm.providers.base import ProviderError
from kernelcraft.llm.retry import RetryPolicy, call_with_retries, parse_retry_after
from kernelcraft.llm.settings import llm_settings


@pytest.fixture()
def config():
    with open(DEFAULT_CONFIG_PATH) as fh:
        return yaml.safe_load(fh)


def test_the_default_ensemble_mirrors_the_method(config):
    for role in ("ideas", "implement"):
        assert [(e["provider"], e["model"], e["weight"]) for e in config["models"][role]] == [
            ("openai", "o3", 1), ("gemini", "gemini-2.5-pro", 1)]
    for model in ("o3", "o4-mini", "gpt-4.1", "gemini-2.5-pro", "gemini-2.5-flash"):
        assert config["prices"][model]["input"] > 0 and config["prices"][model]["output"] > 0
    assert llm_settings(config)["prices"]["o3"] == config["prices"]["o3"]


def test_without_keys_every_api_model_is_replaced_by_the_offline_proposer_loudly(config):
    warnings: list[str] = []
    models = resolve_models(config, env={}, warn=warnings.append)
    offline = [{"provider": "offline", "model": "offline-v1", "weight": 2.0}]
    assert models["ideas"] == offline and models["implement"] == offline
    assert models["requested"]["ideas"] == config["models"]["ideas"]
    assert [(s["model"], s["env"]) for s in models["substituted"]] == [
        ("openai/o3", "OPENAI_API_KEY"), ("gemini/gemini-2.5-pro", "GEMINI_API_KEY or GOOGLE_API_KEY")]
    assert len(warnings) == 2
    assert "OPENAI_API_KEY is not set" in warnings[0] and "openai/o3" in warnings[0] and "offline" in warnings[0]
    assert "GEMINI_API_KEY or GOOGLE_API_KEY" in warnings[1] and "gemini/gemini-2.5-pro" in warnings[1]
    assert all("\n" not in w for w in warnings)


def test_a_set_key_keeps_its_model_and_google_api_key_counts_for_gemini(config):
    warnings: list[str] = []
    models = resolve_models(config, env={"OPENAI_API_KEY": "sk"}, warn=warnings.append)
    assert [(e["provider"], e["weight"]) for e in models["ideas"]] == [("openai", 1), ("offline", 1.0)]
    assert len(warnings) == 1 and "gemini" in warnings[0]
    models = resolve_models(config, env={"OPENAI_API_KEY": "sk", "GOOGLE_API_KEY": "g"}, warn=warnings.append)
    assert models["ideas"] == config["models"]["ideas"] and models["substituted"] == []


def test_an_entry_with_its_own_key_variable_reads_only_that_one(config):
    for role in ("ideas", "implement"):
        config["models"][role] = [{"provider": "openai", "model": "o3", "api_key_env": "TEAM_OPENAI_KEY"}]
    models = resolve_models(config, env={"OPENAI_API_KEY": "sk"}, warn=lambda line: None)
    assert models["substituted"] == [{"model": "openai/o3", "env": "TEAM_OPENAI_KEY", "roles": ["ideas", "implement"]}]
    assert resolve_models(config, env={"TEAM_OPENAI_KEY": "sk"}, warn=lambda line: None)["substituted"] == []


def test_fallback_error_stops_with_one_line_naming_model_and_variable(config):
    config["llm"]["fallback"] = "error"
    with pytest.raises(ConfigError) as info:
        resolve_models(config, env={"GEMINI_API_KEY": "g"})
    msg = str(info.value)
    assert "openai/o3" in msg and "OPENAI_API_KEY" in msg and "llm.fallback" in msg and "\n" not in msg
    with pytest.raises(SystemExit, match=r"^kernelcraft: openai/o3 .*OPENAI_API_KEY"):
        resolve_or_exit(config)


def test_openai_compatible_and_replay_need_no_key(config, tmp_path):
    local = {"provider": "openai_compatible", "model": "qwen", "base_url": "http://localhost:8000/v1"}
    config["models"]["implement"] = [local]
    models = resolve_models(config, env={}, warn=lambda line: None)
    assert models["implement"] == [local]
    (tmp_path / "transcripts").mkdir()
    config["llm"]["replay"] = str(tmp_path)
    config["llm"]["fallback"] = "error"
    models = resolve_models(config, env={})
    assert models["ideas"] == config["models"]["ideas"] and models["substituted"] == []


def test_replay_of_a_missing_run_is_a_one_line_config_error(config, tmp_path):
    config["llm"]["replay"] = str(tmp_path / "results" / "gone")
    with pytest.raises(ValueError, match=r"'llm.replay'.*holds no transcripts folder.*results/<run>"):
        resolve_models(config, env={})


def test_the_run_context_uses_the_effective_models_and_keeps_the_requested_ones(config, monkeypatch, tmp_path):
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    config.update({"backend": "cpu"})
    config["problems"].update({"builtin": ["relu_4096x32768"], "size": "small"})
    monkeypatch.chdir(tmp_path)  # the recognitions the planner keeps go under ./results
    resolved = resolve(config)
    assert resolved["searched"] == ["relu_4096x32768"]  # the offline proposer can search it
    ctx = RunContext.from_config(merge(config, {RESOLVED_KEY: resolved}), results=tmp_path)
    assert ctx.config["models"]["ideas"] == [{"provider": "offline", "model": "offline-v1", "weight": 2.0}]
    assert ctx.config[RESOLVED_KEY]["models"]["requested"]["ideas"][0]["model"] == "o3"


def _error(config, **changes) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(merge(config, changes))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unknown_llm_key_and_bad_fallback_are_named(config):
    assert "'llm.retries'" in _error(config, llm={"retries": 3})
    msg = _error(config, llm={"fallback": "silent"})
    assert "'llm.fallback'" in msg and "offline, error" in msg


def test_an_api_that_the_provider_does_not_speak_is_rejected(config):
    bad = copy.deepcopy(config)
    bad["models"]["ideas"][1]["api"] = "responses"
    with pytest.raises(ConfigError, match=r"'models.ideas.1.api': 'responses' is not an API of provider gemini"):
        check_config(bad)


def test_openai_compatible_without_base_url_names_the_fix(config):
    bad = copy.deepcopy(config)
    bad["models"]["implement"] = [{"provider": "openai_compatible", "model": "qwen"}]
    with pytest.raises(ConfigError, match=r"'models.implement.0'.*needs base_url.*http://localhost:8000/v1"):
        check_config(bad)


def test_a_budget_needs_a_price_for_every_api_model(config):
    bad = copy.deepcopy(config)
    bad["models"]["ideas"].append({"provider": "openai", "model": "gpt-9"})
    with pytest.raises(ConfigError, match=r"no price for model 'gpt-9'.*add prices.gpt-9.*llm.budget_usd: null"):
        check_config(bad)
    bad["llm"]["budget_usd"] = None
    check_config(bad)


def test_api_keys_never_reach_candidate_processes():
    names = [n for names in DEFAULT_KEY_ENV.values() for n in names] + ["TEAM_OPENAI_KEY", "MY_LLM_ENDPOINT"]
    env = scrubbed_env({**{n: "secret" for n in names}, "PATH": "/bin"})
    assert env == {"PATH": "/bin"}


# -- retry arithmetic ---------------------------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_milliseconds_or_an_http_date():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(42.0)
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 5, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_backoff_is_full_jitter_under_an_exponential_cap():
    policy = RetryPolicy(max_retries=8, backoff_s=1.0, max_backoff_s=10.0)
    rng = random.Random(0)
    for retry, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (8, 10.0)]:
        waits = [policy.delay(retry, None, rng) for _ in range(200)]
        assert all(0.0 <= w <= cap for w in waits) and max(waits) > 0.8 * cap
    assert policy.delay(1, 3.0, rng) == 3.0 and policy.delay(1, 99.0, rng) == 10.0


def test_retries_stop_at_a_non_retryable_error_and_after_max_retries():
    calls = []

    def flaky():
        calls.append(1)
        raise ProviderError("HTTP 503: busy", kind="status", retryable=True, status=503)

    waits: list[float] = []
    outcome = call_with_retries(flaky, RetryPolicy(2, 0.1, 1.0), sleep=waits.append, rng=random.Random(1))
    assert outcome.result is None and outcome.attempts == 3 and len(calls) == 3 and len(waits) == 2
    assert [a.wait_s is not None for a in outcome.failed] == [True, True, False]

    def refused():
        raise ProviderError("HTTP 401: bad key", kind="status", retryable=False, status=401)

    outcome = call_with_retries(refused, RetryPolicy(5, 0.1, 1.0), sleep=waits.append)
    assert outcome.attempts == 1 and outcome.error.reason == "HTTP 401: bad key" and len(waits) == 2
