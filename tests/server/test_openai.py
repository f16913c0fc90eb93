"""End-to-end test of `llmos serve` with the official `openai` client.

Run by scripts/test-server (which starts the server with an API key); reads LLMOS_URL,
LLMOS_KEY and LLMOS_MODEL. Plain asserts; exits non-zero on the first failure.
"""

import json
import os
import sys
import urllib.error
import urllib.request

import jsonschema
import openai

URL = os.environ["LLMOS_URL"]
KEY = os.environ["LLMOS_KEY"]
MODEL = os.environ["LLMOS_MODEL"]
client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=300)


def raw(path, body=None, key=KEY, method=None):
    """(status, parsed JSON or text) of a raw HTTP request."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def ask(content, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kw
    )


def test_models():
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL], ids


def test_chat_and_stream_agree():
    r = ask("What is the capital of France?", max_tokens=40, temperature=0)
    text = r.choices[0].message.content
    assert text and "Paris" in text, text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    chunks = list(
        ask("What is the capital of France?", max_tokens=40, temperature=0, stream=True)
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 3, "streamed in pieces"
    assert "".join(pieces) == text, ("stream differs", "".join(pieces), text)
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_completions():
    r = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert "Paris" in r.choices[0].text, r.choices[0].text
    s = client.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in s).strip().startswith("4")


def test_seed_reproducible():
    kw = dict(max_tokens=32, temperature=1.0, top_p=1.0)
    a = ask("Tell me a story.", seed=42, **kw).choices[0].message.content
    b = ask("Tell me a story.", seed=42, **kw).choices[0].message.content
    assert a == b, (a, b)
    others = {ask("Tell me a story.", seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds give different samples"


def test_n_stop_logprobs():
    r = ask("Count: 1, 2, 3", max_tokens=20, temperature=0.9, seed=7, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    full = ask("List three colors.", max_tokens=30, temperature=0).choices[0].message.content
    cut = full[len(full) // 2 :][:2]
    r = ask("List three colors.", max_tokens=30, temperature=0, stop=[cut])
    assert r.choices[0].message.content == full[: full.index(cut)], (full, cut)
    assert r.choices[0].finish_reason == "stop"
    r = ask("Hi", max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) >= 1 and all(len(t.top_logprobs) == 3 for t in lp)
    assert all(t.logprob <= 0 and t.token == t.top_logprobs[0].token for t in lp)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "kind": {"enum": ["person", "animal", "place", "thing"]},
    },
    "required": ["name", "age", "tags", "kind"],
    "additionalProperties": False,
}

SUBJECTS = [
    "a cat", "Paris", "a teacher", "a dog", "the moon", "a pilot", "a chair", "London",
    "a horse", "a doctor", "a river", "a robot", "a farmer", "Tokyo", "a violin", "a baker",
    "an owl", "a mountain", "a nurse", "a bicycle",
]


def test_json_schema_twenty_prompts():
    fmt = {"type": "json_schema", "json_schema": {"name": "entity", "schema": SCHEMA}}
    for i, subject in enumerate(SUBJECTS):
        r = ask(f"Describe {subject} as JSON.", max_tokens=120, temperature=0.7, seed=i,
                response_format=fmt)
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", (subject, r.choices[0].finish_reason, text)
        try:
            value = json.loads(text)
        except ValueError as e:
            raise AssertionError(f"{subject}: reply does not parse: {e}: {text!r}") from e
        jsonschema.validate(value, SCHEMA)
    r = ask("Describe a dog as a JSON object with a name and an age.", max_tokens=200,
            temperature=0, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop", r
    assert isinstance(json.loads(r.choices[0].message.content), dict)


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}]


def test_tool_call_round_trip():
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(
        model=MODEL, messages=msgs, tools=TOOLS, max_tokens=60, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, TOOLS[0]["function"]["parameters"])
    # the same call, streamed as deltas
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=msgs, tools=TOOLS, max_tokens=60, temperature=0,
        tool_choice="required", stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the result goes back; the model answers in text
    msgs += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": args["city"], "forecast": "sunny, 24 C"})},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=msgs, tools=TOOLS, tool_choice="none", max_tokens=40, temperature=0
    )
    assert r.choices[0].message.content, r
    assert r.choices[0].message.tool_calls is None


def test_errors():
    bad = openai.OpenAI(base_url=URL + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    status, body = raw("/v1/models", key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key", (status, body)
    status, body = raw("/v1/chat/completions", "{bad json")
    assert status == 400 and "not valid JSON" in body["error"]["message"], (status, body)
    status, body = raw("/v1/chat/completions", json.dumps({"model": MODEL, "messages": []}))
    assert status == 400, (status, body)
    status, body = raw("/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 7}))
    assert status == 400 and body["error"]["param"] == "temperature", (status, body)
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError:
        pass
    try:
        ask("word " * 5000, max_tokens=5)
        raise AssertionError("a prompt over the context was accepted")
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded", e
    try:
        client.embeddings.create(model=MODEL, input="hello")
        raise AssertionError("embeddings from a model without an embedding head")
    except openai.BadRequestError as e:
        assert "embedding" in str(e)
    status, _ = raw("/health", key=None)
    assert status == 200
    status, text = raw("/metrics", key=None)
    assert status == 200 and "llmos_generated_tokens_total" in text


if __name__ == "__main__":
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - report every failure, then exit 1
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)
