"""LLMClient against a real HTTP server speaking the OpenAI (chat, responses) and Gemini wire formats, through the
official SDKs: answers, usage, cost and transcripts; retries with Retry-After; timeouts; malformed and truncated
replies; the budget cap; resume and replay."""

from __future__ import annotations

import email.utils
import json
import time
from pathlib import Path

import pytest
from llm_server import LLMServer, Scripted

from kernelcraft import layout
from kernelcraft.llm import LLMClient, request_for, spent_usd, usage_summary
from kernelcraft.llm.types import Message

ENV = {"OPENAI_API_KEY": "sk-test-openai", "GEMINI_API_KEY": "test-gemini"}
PRICES = {"test-model": {"input": 2.0, "output": 8.0}}  # 1000 in + 500 out = $0.006
MESSAGES = [Message("system", "You write CUDA kernels."), Message("user", "write a kernel")]
WIRES = ["chat", "responses", "gemini"]


@pytest.fixture()
def server():
    with LLMServer() as s:
        yield s


class Sleeps(list):
    """Records the backoff waits instead of spending them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def entry(server: LLMServer, wire: str, model: str = "test-model", **extra) -> dict:
    if wire == "gemini":
        return {"provider": "gemini", "model": model, "base_url": server.gemini_url, **extra}
    return {"provider": "openai", "model": model, "base_url": server.openai_url, "api": wire, **extra}


def make_client(run_root: Path, sleeps: Sleeps | None = None, **settings) -> LLMClient:
    base = {"timeout_s": 5, "max_retries": 2, "backoff_s": 0.5, "max_backoff_s": 60, "concurrency": 4,
            "prices": PRICES}
    kwargs = {"sleep": sleeps} if sleeps is not None else {}
    return LLMClient(run_root, base | settings, env=ENV, **kwargs)


def ask(client: LLMClient, server: LLMServer, wire: str, text: str = "write a kernel", **tags):
    messages = [MESSAGES[0], Message("user", text)]
    return client.complete(request_for(entry(server, wire), messages, purpose="implement",
                                       tags={"problem": "relu", "round": 1, **tags}))


def transcript(run_root: Path, key: str) -> dict:
    return json.loads((layout.transcripts_dir(run_root) / key[:2] / f"{key}.json").read_text())


def stored_answers(run_root: Path) -> list[Path]:
    return sorted(layout.transcripts_dir(run_root).glob("??/*.json"))


# -- happy path ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_each_wire_format_returns_text_usage_cost_and_stores_the_transcript(tmp_path, server, wire):
    client = make_client(tmp_path)
    request = request_for(entry(server, wire), MESSAGES, purpose="implement", tags={"problem": "relu", "round": 2},
                          sample=1, seed=7)
    reply = client.complete(request)

    assert reply.error is None and reply.text == "echo: write a kernel"
    assert reply.finish_reason == "stop" and reply.attempts == 1 and not reply.cached
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.reasoning_tokens) == (1000, 500, 100)
    assert reply.cost_usd == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert reply.key == request.key()

    (received,) = server.received
    assert received.wire == wire and received.model == "test-model"
    assert received.messages == [{"role": "system", "content": "You write CUDA kernels."},
                                 {"role": "user", "content": "write a kernel"}]
    if wire == "gemini":
        assert received.headers["x-goog-api-key"] == "test-gemini"
    else:
        assert received.headers["authorization"] == "Bearer sk-test-openai"

    record = transcript(tmp_path, reply.key)
    assert record["request"]["messages"] == [{"role": "system", "content": "You write CUDA kernels."},
                                             {"role": "user", "content": "write a kernel"}]
    assert record["request"]["purpose"] == "implement" and record["request"]["tags"] == {"problem": "relu",
                                                                                         "round": 2}
    assert record["request"]["sample"] == 1 and record["request"]["seed"] == 7
    assert record["reply"]["text"] == "echo: write a kernel" and record["reply"]["finish_reason"] == "stop"
    assert record["reply"]["usage"] == {"input_tokens": 1000, "output_tokens": 500, "reasoning_tokens": 100}
    assert record["reply"]["cost_usd"] == pytest.approx(0.006) and record["reply"]["attempts"] == 1
    assert record["reply"]["latency_s"] > 0 and record["failed_attempts"] == []
    assert "echo: write a kernel" in json.dumps(record["raw_response"])
    assert spent_usd(tmp_path) == pytest.approx(0.006)


@pytest.mark.parametrize("wire", WIRES)
def test_structured_output_is_requested_in_each_wire_format(tmp_path, server, wire):
    schema = {"title": "ideas", "type": "object", "properties": {"ideas": {"type": "array"}}}
    client = make_client(tmp_path)
    client.complete(request_for(entry(server, wire), MESSAGES, purpose="ideas", json_schema=schema))
    body = server.received[0].body
    if wire == "chat":
        assert body["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "ideas", "schema": schema, "strict": False}}
    elif wire == "responses":
        assert body["text"]["format"] == {"type": "json_schema", "name": "ideas", "schema": schema,
                                          "strict": False}
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert body["generationConfig"]["responseJsonSchema"] == schema


def test_scripted_usage_and_thinking_tokens_are_billed_as_output(tmp_path, server):
    server.responder = lambda req: Scripted("ok", input_tokens=10_000, output_tokens=3_000, reasoning_tokens=2_000)
    reply = ask(make_client(tmp_path), server, "gemini")
    body = server.received[0]
    assert body.wire == "gemini"
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.reasoning_tokens) == (10_000, 3_000,
                                                                                                  2_000)
    assert reply.cost_usd == pytest.approx((10_000 * 2.0 + 3_000 * 8.0) / 1e6)


# -- reasoning models ---------------------------------------------------------------------------------------------


def test_reasoning_models_get_no_temperature_and_get_their_effort(tmp_path, server):
    client = make_client(tmp_path, prices={})
    o3 = entry(server, "chat", model="o3", temperature=0.7, reasoning_effort="high", max_output_tokens=4000)
    request = request_for(o3, MESSAGES, purpose="ideas")
    assert request.temperature is None  # dropped before the key is taken: the key reflects what is sent
    client.complete(request)
    client.complete(request_for(entry(server, "responses", model="o4-mini", temperature=0.7,
                                      max_output_tokens=4000), MESSAGES, purpose="ideas"))
    client.complete(request_for(entry(server, "chat", model="gpt-4.1", temperature=0.7, max_output_tokens=4000),
                                MESSAGES, purpose="ideas"))
    chat_o3, responses_o4, chat_41 = (r.body for r in server.received)
    assert "temperature" not in chat_o3 and chat_o3["reasoning_effort"] == "high"
    assert chat_o3["max_completion_tokens"] == 4000 and "max_tokens" not in chat_o3
    assert "temperature" not in responses_o4 and "reasoning" not in responses_o4
    assert responses_o4["max_output_tokens"] == 4000
    assert chat_41["temperature"] == 0.7 and chat_41["max_completion_tokens"] == 4000
    assert "reasoning_effort" not in chat_41


def test_openai_compatible_needs_no_key_and_uses_max_tokens(tmp_path, server):
    client = LLMClient(tmp_path, {"timeout_s": 5, "prices": {}}, env={})
    local = {"provider": "openai_compatible", "model": "qwen2.5-coder", "base_url": server.openai_url,
             "temperature": 0.2, "max_output_tokens": 512}
    reply = client.complete(request_for(local, MESSAGES, purpose="implement"))
    assert reply.ok and reply.cost_usd is None
    body = server.received[0].body
    assert body["max_tokens"] == 512 and body["temperature"] == 0.2
    assert server.received[0].headers["authorization"].startswith("Bearer ")


def test_a_missing_api_key_is_an_error_reply_without_a_call(tmp_path, server):
    client = LLMClient(tmp_path, {"prices": PRICES}, env={})
    reply = client.complete(request_for(entry(server, "chat"), MESSAGES, purpose="ideas"))
    assert reply.error == "openai/test-model: no API key; set OPENAI_API_KEY" and server.count == 0
    reply = client.complete(request_for(entry(server, "gemini"), MESSAGES, purpose="ideas"))
    assert reply.error == "gemini/test-model: no API key; set GEMINI_API_KEY or GOOGLE_API_KEY"
    assert server.count == 0


# -- retries ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", ["chat", "gemini"])
def test_429_with_retry_after_waits_what_the_server_asks_then_succeeds(tmp_path, server, wire):
    sleeps = Sleeps()
    server.fail(429, retry_after=7, message="slow down")
    reply = ask(make_client(tmp_path, sleeps), server, wire)
    assert reply.ok and reply.text == "echo: write a kernel" and reply.attempts == 2
    assert sleeps == [7.0] and server.count == 2
    (failed,) = transcript(tmp_path, reply.key)["failed_attempts"]
    assert failed["status"] == 429 and failed["wait_s"] == 7.0 and "slow down" in failed["error"]
    assert transcript(tmp_path, reply.key)["reply"]["attempts"] == 2


def test_retry_after_ms_and_http_dates_are_honoured_and_capped(tmp_path, server):
    sleeps = Sleeps()
    client = make_client(tmp_path, sleeps, max_retries=3, max_backoff_s=60)
    server.fail(503, retry_after_ms=1500)
    server.fail(429, retry_after=email.utils.formatdate(time.time() + 30, usegmt=True))
    server.fail(429, retry_after=3600)
    reply = ask(client, server, "chat")
    assert reply.ok and reply.attempts == 4
    assert sleeps[0] == 1.5
    assert 27.0 <= sleeps[1] <= 30.0
    assert sleeps[2] == 60.0  # an hour asked for, max_backoff_s granted


def test_a_real_one_second_retry_after_is_waited_for(tmp_path, server):
    server.fail(503, retry_after=1)
    start = time.monotonic()
    reply = ask(make_client(tmp_path, backoff_s=0.0), server, "responses")
    elapsed = time.monotonic() - start
    assert reply.ok and reply.attempts == 2
    assert server.received[1].time - server.received[0].time >= 1.0
    assert 1.0 <= elapsed < 4.0


@pytest.mark.parametrize("wire", WIRES)
def test_5xx_until_retries_run_out_is_an_error_reply_and_nothing_is_stored(tmp_path, server, wire):
    sleeps = Sleeps()
    server.fail(503, times=10, message="overloaded")
    reply = ask(make_client(tmp_path, sleeps, max_retries=2, backoff_s=0.5), server, wire)
    assert reply.text is None and reply.attempts == 3
    assert "HTTP 503" in reply.error and "overloaded" in reply.error and "gave up after 3 attempts" in reply.error
    assert "\n" not in reply.error
    assert server.count == 3  # max_retries + 1
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0  # full jitter under the cap
    assert stored_answers(tmp_path) == []
    (failure,) = [json.loads(line) for line in (layout.transcripts_dir(tmp_path) / "failed.jsonl").open()]
    assert failure["key"] == reply.key and [a["status"] for a in failure["attempts"]] == [503, 503, 503]


def test_a_dropped_connection_is_retried(tmp_path, server):
    sleeps = Sleeps()
    server.drop()
    reply = ask(make_client(tmp_path, sleeps), server, "chat")
    assert reply.ok and reply.attempts == 2 and len(sleeps) == 1
    (failed,) = transcript(tmp_path, reply.key)["failed_attempts"]
    assert failed["kind"] == "connection"


@pytest.mark.parametrize("wire,status", [("chat", 400), ("responses", 401), ("gemini", 400), ("gemini", 404)])
def test_non_retryable_4xx_fails_at_once_naming_status_and_message(tmp_path, server, wire, status):
    sleeps = Sleeps()
    server.fail(status, message="Unsupported parameter: 'temperature'")
    reply = ask(make_client(tmp_path, sleeps), server, wire)
    assert reply.text is None and reply.attempts == 1 and server.count == 1 and sleeps == []
    assert f"HTTP {status}" in reply.error and "Unsupported parameter: 'temperature'" in reply.error
    assert "not retried" in reply.error and "\n" not in reply.error


@pytest.mark.parametrize("wire", ["chat", "gemini"])
def test_a_hung_call_hits_its_timeout(tmp_path, server, wire):
    server.hang(10, times=2)
    start = time.monotonic()
    reply = ask(make_client(tmp_path, Sleeps(), timeout_s=0.5, max_retries=1), server, wire)
    elapsed = time.monotonic() - start
    assert reply.text is None and "timeout" in reply.error and "0.5 s" in reply.error
    assert reply.attempts == 2 and server.count == 2
    assert elapsed < 3.0
    assert stored_answers(tmp_path) == []


# -- malformed and truncated replies ------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("fault", ["malformed", "empty"])
def test_a_malformed_reply_is_an_error_not_stored_and_asked_again_next_time(tmp_path, server, wire, fault):
    getattr(server, fault)()
    client = make_client(tmp_path, Sleeps())
    reply = ask(client, server, wire)
    assert reply.text is None and reply.error.startswith("openai/" if wire != "gemini" else "gemini/")
    assert "malformed response" in reply.error and "not retried" in reply.error
    assert server.count == 1 and stored_answers(tmp_path) == []
    again = ask(client, server, wire)
    assert again.ok and not again.cached and server.count == 2


@pytest.mark.parametrize("wire", WIRES)
def test_a_truncated_reply_is_an_answer_with_finish_reason_length(tmp_path, server, wire):
    server.responder = lambda req: "0123456789"
    server.truncate()
    reply = ask(make_client(tmp_path), server, wire)
    assert reply.ok and reply.text == "01234" and reply.finish_reason == "length"
    assert transcript(tmp_path, reply.key)["reply"]["finish_reason"] == "length"
    again = ask(make_client(tmp_path), server, wire)  # a returned call is reused, truncated or not
    assert again.cached and again.text == "01234" and server.count == 1


# -- budget -------------------------------------------------------------------------------------------------------


def test_the_budget_cap_stops_new_calls_across_clients_of_the_run(tmp_path, server):
    prices = {"test-model": {"input": 1000.0, "output": 1000.0}}  # 1000 in + 500 out = $1.50 a call
    client = make_client(tmp_path, budget_usd=2.0, prices=prices)
    first = ask(client, server, "chat", "one")
    second = ask(client, server, "gemini", "two")  # $1.50 spent < $2.00: allowed
    assert first.ok and second.ok and server.count == 2
    third = ask(client, server, "chat", "three")
    assert third.text is None and server.count == 2
    assert third.error == "budget_usd reached: spent $3.00 of $2.00; no new model calls"
    other_job = make_client(tmp_path, budget_usd=2.0, prices=prices)  # another process of the same run
    assert ask(other_job, server, "responses", "four").error.startswith("budget_usd reached")
    assert server.count == 2
    assert ask(other_job, server, "chat", "one").cached  # stored answers are still served
    assert spent_usd(tmp_path) == pytest.approx(3.0)


# -- resume and replay --------------------------------------------------------------------------------------------


def test_a_second_client_on_the_same_run_repeats_no_call_that_returned(tmp_path, server):
    first = make_client(tmp_path, Sleeps(), max_retries=0)
    server.answer()
    server.fail(503)
    replies = [ask(first, server, w, t) for w, t in [("chat", "a"), ("gemini", "b"), ("responses", "c")]]
    assert [r.ok for r in replies] == [True, False, True] and server.count == 3

    second = make_client(tmp_path, Sleeps(), max_retries=0)
    again = [ask(second, server, w, t) for w, t in [("chat", "a"), ("gemini", "b"), ("responses", "c")]]
    assert server.count == 4  # only the call that failed is made again
    assert [r.cached for r in again] == [True, False, True]
    assert [r.text for r in again] == ["echo: a", "echo: b", "echo: c"]
    assert again[0].usage == replies[0].usage and again[0].cost_usd == replies[0].cost_usd

    third = make_client(tmp_path)
    assert all(ask(third, server, w, t).cached for w, t in [("chat", "a"), ("gemini", "b"), ("responses", "c")])
    assert server.count == 4

    summary = usage_summary(tmp_path)
    assert summary["total"]["calls"] == 3 and summary["total"]["failed_calls"] == 1
    assert summary["total"]["cached_calls"] == 5
    assert summary["total"]["input_tokens"] == 3000 and summary["total"]["cost_usd"] == pytest.approx(0.018)
    assert summary["per_model"]["gemini/test-model"]["calls"] == 1
    assert summary["per_problem"]["relu"]["calls"] == 3


def test_replay_answers_from_a_recorded_run_with_zero_calls_and_errors_on_a_miss(tmp_path, server):
    recorded = tmp_path / "results" / "recorded"
    original = ask(make_client(recorded), server, "chat", "a")
    assert original.ok and server.count == 1

    fresh = tmp_path / "results" / "replayed"
    client = make_client(fresh, replay=str(recorded))
    replayed = ask(client, server, "chat", "a")
    assert replayed.ok and replayed.cached and replayed.text == original.text and server.count == 1
    stored = transcript(fresh, replayed.key)  # the new run is complete on its own
    assert stored["replayed_from"] == str(recorded) and stored["replay_match"] == "key"

    miss = ask(client, server, "chat", "never asked", round=2)
    assert miss.text is None and server.count == 1
    assert miss.error == f"replay: no recorded answer for this request in {recorded}"


def test_replay_matches_a_prompt_that_differs_only_in_measurements_by_its_labels(tmp_path, server):
    """Later rounds quote measured times, which change from run to run: the call's place in the search (purpose,
    problem, round, idea, sample) finds the recorded answer."""
    server.responder = lambda req: "kernel for " + req.messages[-1]["content"]
    recorded = tmp_path / "results" / "recorded"
    recorder = make_client(recorded)
    original = ask(recorder, server, "chat", "seed time 1.23 ms", round=2, idea="r2_i0")
    ask(recorder, server, "chat", "other idea, seed time 1.23 ms", round=2, idea="r2_i1")
    assert server.count == 2

    client = make_client(tmp_path / "results" / "replayed", replay=str(recorded))
    replayed = ask(client, server, "chat", "seed time 1.25 ms", round=2, idea="r2_i0")
    assert replayed.ok and replayed.text == original.text == "kernel for seed time 1.23 ms" and server.count == 2
    stored = transcript(tmp_path / "results" / "replayed", replayed.key)
    assert stored["replay_match"] == "labels" and stored["recorded_key"] == original.key
    assert stored["request"]["messages"][-1]["content"] == "seed time 1.25 ms"
    assert ask(client, server, "chat", "seed time 1.26 ms", round=2, idea="r2_i9").error.startswith("replay: no")
    assert server.count == 2

    ask(recorder, server, "chat", "a third prompt", round=2, idea="r2_i1")  # now two recorded calls share labels
    ambiguous = make_client(tmp_path / "results" / "again", replay=str(recorded))
    assert ask(ambiguous, server, "chat", "seed time 1.27 ms", round=2, idea="r2_i1").error.startswith("replay: no")
    assert server.count == 3


def test_replay_of_a_folder_without_transcripts_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"^config key 'llm.replay': .* holds no transcripts folder; point it at"):
        LLMClient(tmp_path / "run", {"replay": str(tmp_path / "nowhere")}, env=ENV)


# -- parallel calls -----------------------------------------------------------------------------------------------


def test_complete_many_keeps_order_and_holds_the_concurrency_limit(tmp_path, server):
    server.delay_s = 0.15
    client = make_client(tmp_path, concurrency=2)
    requests = [request_for(entry(server, "chat"), [Message("user", f"n{i}")], purpose="implement", sample=i)
                for i in range(6)]
    replies = client.complete_many(requests)
    assert [r.text for r in replies] == [f"echo: n{i}" for i in range(6)]
    assert server.count == 6 and server.max_in_flight == 2


def test_the_same_request_twice_in_one_batch_is_one_call(tmp_path, server):
    client = make_client(tmp_path)
    request = request_for(entry(server, "chat"), MESSAGES, purpose="implement")
    a, b = client.complete_many([request, request])
    assert a.text == b.text == "echo: write a kernel" and server.count == 1
    assert sorted([a.cached, b.cached]) == [False, True]
