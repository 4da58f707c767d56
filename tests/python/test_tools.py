"""Tool calling and structured outputs through the openai SDK, as an agent
framework would use them: Qwen2.5-Coder-0.5B-Instruct (its own template's
<tool_call> format) and SmolLM2 (no tool support in its template; schemas
enforced at temperature 1). 50 random JSON schemas from a seeded generator
must each give output that jsonschema accepts."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest

from conftest import REPO, CHAT_MODEL, start_server

QWEN = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
QWEN_DIR = REPO / "models-extra"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def qwen_client():
    if not (QWEN_DIR / "Qwen").is_dir():
        pytest.fail(f"{QWEN_DIR}/Qwen is missing: run `make models-extra`")
    srv = start_server(["--models-dir", str(QWEN_DIR)])
    c = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    yield c
    c.close()
    srv.stop()


def test_sdk_tool_call_is_parsable(qwen_client):
    r = qwen_client.chat.completions.create(
        model=QWEN, temperature=0, max_tokens=80, tools=[WEATHER],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert args["city"] == "Paris"


def test_sdk_stream_accumulates_the_call(qwen_client):
    with qwen_client.chat.completions.stream(
            model=QWEN, temperature=0, max_tokens=80, tools=[WEATHER], tool_choice="required",
            messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_multi_turn_with_a_tool_result(qwen_client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = qwen_client.chat.completions.create(model=QWEN, temperature=0, max_tokens=80, tools=[WEATHER],
                                            tool_choice="required", messages=messages)
    msg = r.choices[0].message
    messages.append(msg.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": msg.tool_calls[0].id,
                     "content": json.dumps({"temp_c": 18, "sky": "cloudy"})})
    r2 = qwen_client.chat.completions.create(model=QWEN, temperature=0, max_tokens=60, tools=[WEATHER],
                                             tool_choice="none", messages=messages)
    assert r2.choices[0].message.content
    assert r2.choices[0].message.tool_calls is None
    # A tool result that answers no call is refused.
    bad = messages[:1] + [{"role": "tool", "tool_call_id": "call_nope", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as e:
        qwen_client.chat.completions.create(model=QWEN, max_tokens=5, messages=bad)
    assert e.value.body["param"] == "messages[1].tool_call_id"


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)
    population: int
    landmarks: list[str] = pydantic.Field(max_length=3)


def test_sdk_parse_returns_a_valid_object(qwen_client):
    r = qwen_client.chat.completions.parse(
        model=QWEN, temperature=0, max_tokens=200, response_format=City,
        messages=[{"role": "user", "content": "Describe Paris: its name, country, population and three landmarks."}])
    city = r.choices[0].message.parsed
    assert isinstance(city, City)
    assert r.choices[0].finish_reason == "stop"


def test_invalid_tools_and_schemas_are_400(client):
    for kwargs, param in [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
         "tool_choice.function.name"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=CHAT_MODEL, max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}], **kwargs)
        assert e.value.body["param"] == param, e.value.body


# --- 50 random schemas -------------------------------------------------------

def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A random schema from the keywords servers are asked for: bounded so
    that a finished document is short."""
    kinds = ["string", "integer", "number", "boolean", "enum", "null"]
    if depth < 2:
        kinds += ["object", "object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        s = {"type": "string", "maxLength": rng.randint(1, 16)}
        if rng.random() < 0.3:
            s["minLength"] = 1
        if rng.random() < 0.2:
            s = {"type": "string", "pattern": rng.choice(["^[a-z]{2,8}$", "^[A-Z][a-z]{1,6}$", "^[0-9]{3}-[0-9]{4}$"])}
        return s
    if kind == "integer":
        lo = rng.randint(-100, 100)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 1000)}
    if kind == "number":
        return {"type": "number", "minimum": 0, "maximum": rng.choice([1, 10, 1000])}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "cyan", 1, 2, True, None], rng.randint(1, 4))}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "maxItems": rng.randint(1, 3),
                "minItems": rng.randint(0, 1)}
    props = {f"{rng.choice(['id', 'name', 'kind', 'value', 'tags', 'info', 'size'])}_{i}": random_schema(rng, depth + 1)
             for i in range(rng.randint(1, 4))}
    required = [k for k in props if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def test_fifty_random_schemas_give_valid_output(client):
    rng = random.Random(20261202)
    schemas = [{"type": "object", "properties": {"answer": random_schema(rng)}, "required": ["answer"],
                "additionalProperties": False} if i % 3 == 0 else random_schema(rng) for i in range(50)]

    def run(i_schema):
        i, schema = i_schema
        r = client.chat.completions.create(
            model=CHAT_MODEL, temperature=1, seed=i, max_tokens=400,
            messages=[{"role": "user", "content": "Reply with JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
        return schema, r.choices[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, enumerate(schemas)))
    finished = 0
    for schema, choice in results:
        if choice.finish_reason == "length":
            continue
        assert choice.finish_reason == "stop"
        finished += 1
        doc = json.loads(choice.message.content)
        jsonschema.validate(doc, schema)
    # Cut by max_tokens is allowed, but the bounded schemas mostly finish.
    assert finished >= 45, f"only {finished} of 50 finished"
