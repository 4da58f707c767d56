"""Raw HTTP responses of hfms validated against the OpenAI OpenAPI schemas
(tests/reference/openai-openapi.yaml) with `jsonschema`.

A failure here means the server's JSON does not match the spec: fix the
server, not the schema.
"""

from __future__ import annotations

import base64
import copy
import json
import urllib.error
import urllib.request

import jsonschema
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT202012

from conftest import CHAT_MODEL, EMBED_MODEL, REFERENCE

SPEC_URI = "urn:openai-openapi"


# ---- the spec as JSON Schema ---------------------------------------------------


def openapi_to_jsonschema(node):
    """OpenAPI 3.1 schemas are JSON Schema 2020-12 except for the 3.0 keyword
    `nullable: true`, which this spec still uses in places. Rewrite
    `{..., nullable: true}` as `anyOf: [{...}, {type: null}]` everywhere (this
    also covers `enum`s and `$ref`s marked nullable). `$ref`s are left alone:
    they resolve inside the document through the registry below."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not (k == "nullable" and isinstance(v, bool))}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def derived_schemas(schemas: dict) -> dict:
    """The few deliberate departures from the spec, each one explained. They
    live beside the spec's own schemas so their `$ref`s resolve the same way."""
    extra = {}

    # Embeddings with encoding_format=base64: the spec's Embedding schema only
    # describes float lists (`embedding: array of number`), yet the same
    # endpoint returns the vector as a base64 string of little-endian float32
    # when asked. Everything but that one field is the unchanged schema.
    emb = copy.deepcopy(schemas["Embedding"])
    emb["properties"]["embedding"] = {"type": "string", "contentEncoding": "base64"}
    resp = copy.deepcopy(schemas["CreateEmbeddingResponse"])
    resp["properties"]["data"]["items"] = emb
    extra["hfms.CreateEmbeddingResponseBase64"] = resp

    # Streamed legacy completions: the spec says stream chunks share
    # CreateCompletionResponse's shape, but a chunk before the last cannot
    # have a finish reason yet; OpenAI sends `finish_reason: null` there (as
    # the chat chunk schema spells out), and, with include_usage,
    # `usage: null` on every chunk but the usage one (likewise). Only those two
    # fields gain `null`; the chunks that carry a finish reason or the usage
    # are also checked against the unchanged schema.
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    fr = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [fr, {"type": "null"}]}
    chunk["properties"]["usage"] = {"anyOf": [chunk["properties"]["usage"], {"type": "null"}]}
    extra["hfms.CreateCompletionStreamChunk"] = chunk
    return extra


class SpecValidator:
    """Validates instances against components.schemas.NAME of the converted spec."""

    def __init__(self):
        with open(REFERENCE / "openai-openapi.yaml", "rb") as f:
            spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.schemas = openapi_to_jsonschema(spec["components"]["schemas"])
        self.schemas.update(derived_schemas(self.schemas))
        root = {"components": {"schemas": self.schemas}}
        self.registry = referencing.Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(root))
        self.validators = {}

    def errors(self, name: str, instance) -> list:
        if name not in self.validators:
            assert name in self.schemas, f"no schema {name}"
            self.validators[name] = jsonschema.Draft202012Validator(
                {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=self.registry
            )
        return sorted(self.validators[name].iter_errors(instance), key=lambda e: list(e.absolute_path))

    def __call__(self, name: str, instance) -> None:
        errors = self.errors(name, instance)
        if errors:
            lines = [
                f"- at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message} "
                f"(schema path {'/'.join(map(str, e.absolute_schema_path))})"
                for e in errors[:10]
            ]
            pytest.fail(
                f"response does not match {name}:\n" + "\n".join(lines)
                + f"\ninstance: {json.dumps(instance)[:2000]}",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def validate() -> SpecValidator:
    return SpecValidator()


def test_converter():
    s = openapi_to_jsonschema({"type": "string", "enum": ["a"], "nullable": True})
    v = jsonschema.Draft202012Validator(s)
    assert v.is_valid("a") and v.is_valid(None) and not v.is_valid("b")
    s = openapi_to_jsonschema({"properties": {"nullable": {"type": "integer"}}, "nullable": False})
    assert s == {"properties": {"nullable": {"type": "integer"}}}


def test_validator_is_strict(validate):
    """The converted schemas do reject bad instances, through $refs and nullable."""
    good = {
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "hi", "refusal": None}}],
    }
    assert validate.errors("CreateChatCompletionResponse", good) == []
    bad = copy.deepcopy(good)
    bad["choices"][0]["message"]["content"] = 5  # inside $ref ChatCompletionResponseMessage
    assert validate.errors("CreateChatCompletionResponse", bad)
    bad = copy.deepcopy(good)
    bad["choices"][0]["finish_reason"] = "bogus"
    assert validate.errors("CreateChatCompletionResponse", bad)
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "usage": None,
             "choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": None, "finish_reason": None}]}
    assert validate.errors("CreateChatCompletionStreamResponse", chunk) == []  # nullable: true
    chunk["choices"][0]["finish_reason"] = "bogus"  # a nullable enum still checks its values
    assert validate.errors("CreateChatCompletionStreamResponse", chunk)


# ---- raw HTTP --------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self):
        return json.loads(self.body)


def http(base_url: str, method: str, path: str, body: dict | bytes | None = None) -> Reply:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(
        base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


def sse_events(base_url: str, path: str, body: dict) -> list[str]:
    """POST a streaming request; the `data:` payloads of its events, in order."""
    req = urllib.request.Request(
        base_url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )
    events, data = [], []
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
        assert r.headers.get("content-type", "").startswith("text/event-stream")
        for raw in r:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    events.append("\n".join(data))
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            # other fields (event:, id:, retry:) and comments are not used here
    if data:
        events.append("\n".join(data))
    return events


def stream_chunks(base_url: str, path: str, body: dict) -> list[dict]:
    events = sse_events(base_url, path, body)
    assert events, "no events"
    assert events[-1] == "[DONE]", f"the stream must end with data: [DONE], got {events[-1]!r}"
    assert "[DONE]" not in events[:-1]
    return [json.loads(e) for e in events[:-1]]


def ok_json(r: Reply):
    assert r.status == 200, r.body[:500]
    assert r.content_type.startswith("application/json")
    return r.json()


CHAT_BODY = {
    "model": CHAT_MODEL,
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "List three primary colors, separated by commas."},
    ],
    "max_tokens": 16,
    "temperature": 0,
}


# ---- chat ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{}, {"logprobs": True, "top_logprobs": 3}, {"n": 2, "temperature": 0.8, "seed": 7}, {"stop": ["Blue"]}],
    ids=["plain", "logprobs", "n2", "stop"],
)
def test_chat_completion_response(base_url, validate, extra):
    body = ok_json(http(base_url, "POST", "/v1/chat/completions", {**CHAT_BODY, **extra}))
    validate("CreateChatCompletionResponse", body)


@pytest.mark.parametrize(
    "extra",
    [{}, {"stream_options": {"include_usage": True}}, {"logprobs": True, "top_logprobs": 2, "n": 2}],
    ids=["plain", "include_usage", "logprobs-n2"],
)
def test_chat_completion_stream(base_url, validate, extra):
    chunks = stream_chunks(base_url, "/v1/chat/completions", {**CHAT_BODY, **extra, "stream": True})
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    if "stream_options" in extra:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert all(c["usage"] is None for c in chunks[:-1])


# ---- completions -----------------------------------------------------------------

COMPLETION_BODY = {"model": CHAT_MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


@pytest.mark.parametrize(
    "extra",
    [{}, {"logprobs": 2}, {"echo": True}, {"prompt": ["Once upon a time", "The sky is"], "n": 2}],
    ids=["plain", "logprobs", "echo", "prompts-n2"],
)
def test_completion_response(base_url, validate, extra):
    body = ok_json(http(base_url, "POST", "/v1/completions", {**COMPLETION_BODY, **extra}))
    validate("CreateCompletionResponse", body)


@pytest.mark.parametrize(
    "extra",
    [{}, {"logprobs": 2}, {"stream_options": {"include_usage": True}}],
    ids=["plain", "logprobs", "include_usage"],
)
def test_completion_stream(base_url, validate, extra):
    chunks = stream_chunks(base_url, "/v1/completions", {**COMPLETION_BODY, **extra, "stream": True})
    for c in chunks:
        validate("hfms.CreateCompletionStreamChunk", c)
        # The chunk that ends the choice, and the usage chunk, have nothing
        # to be null about: they must match the spec's schema unchanged.
        has_null = any(ch["finish_reason"] is None for ch in c["choices"]) or ("usage" in c and c["usage"] is None)
        if not has_null:
            validate("CreateCompletionResponse", c)
    assert any(ch["finish_reason"] for c in chunks for ch in c["choices"])
    if "stream_options" in extra:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


# ---- embeddings ------------------------------------------------------------------


@pytest.mark.parametrize("inp", ["Hello, world!", ["one", "two", "three"], [101, 7592, 1010, 2088, 999, 102]],
                         ids=["string", "list", "token-ids"])
def test_embedding_response_float(base_url, validate, inp):
    body = ok_json(http(base_url, "POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": inp, "encoding_format": "float"}))
    validate("CreateEmbeddingResponse", body)


def test_embedding_response_base64(base_url, validate):
    body = ok_json(http(base_url, "POST", "/v1/embeddings",
                        {"model": EMBED_MODEL, "input": ["one", "two"], "encoding_format": "base64"}))
    validate("hfms.CreateEmbeddingResponseBase64", body)
    for d in body["data"]:
        assert len(base64.b64decode(d["embedding"], validate=True)) == 4 * 384


# ---- models ----------------------------------------------------------------------


def test_list_models_response(base_url, validate):
    body = ok_json(http(base_url, "GET", "/v1/models"))
    validate("ListModelsResponse", body)
    assert len(body["data"]) >= 2
    for m in body["data"]:
        validate("Model", m)


@pytest.mark.parametrize("name", [CHAT_MODEL, EMBED_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_model_response(base_url, validate, name):
    validate("Model", ok_json(http(base_url, "GET", f"/v1/models/{name}")))


# ---- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", "/v1/chat/completions", {**CHAT_BODY, "messages": []}, 400),
        ("POST", "/v1/chat/completions", {**CHAT_BODY, "temperature": 5}, 400),
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", {"messages": CHAT_BODY["messages"]}, 400),
        ("POST", "/v1/completions", {**COMPLETION_BODY, "prompt": []}, 400),
        ("POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": ""}, 400),
        ("POST", "/v1/embeddings", {"model": CHAT_MODEL, "input": "Hi"}, 400),
        ("POST", "/v1/chat/completions", {**CHAT_BODY, "model": "no-such-model"}, 404),
        ("POST", "/v1/embeddings", {"model": "no-such-model", "input": "Hi"}, 404),
        ("GET", "/v1/models/no-such-model", None, 404),
    ],
    ids=["empty-messages", "temperature", "bad-json", "no-model", "empty-prompt", "empty-input",
         "wrong-task", "chat-unknown-model", "embeddings-unknown-model", "get-unknown-model"],
)
def test_error_response(base_url, validate, method, path, body, status):
    r = http(base_url, method, path, body)
    assert r.status == status, r.body[:500]
    assert r.content_type.startswith("application/json")
    validate("ErrorResponse", r.json())


def test_error_response_413(base_url, validate):
    # ~10 MB against the default 8 MiB body limit.
    big = json.dumps({**CHAT_BODY, "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]}).encode()
    r = http(base_url, "POST", "/v1/chat/completions", big)
    assert r.status == 413, r.body[:500]
    body = r.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "request_too_large"
