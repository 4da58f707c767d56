"""hfms driven by the official `openai` Python SDK, as a real client would."""

from __future__ import annotations

import base64
import math
import re
import struct

import openai
import pytest

from conftest import CHAT_MODEL, CHAT_MODEL_ID, EMBED_MODEL, EMBED_MODEL_ID

# The greedy answer of SmolLM2-135M-Instruct to tests/reference/inputs/chat.json
# (tests/reference/smollm2_greedy_hf.json: 29 prompt tokens, 14 generated
# tokens including <|im_end|>).
REFERENCE_TEXT = "Primary colors are:\n\nRed, Blue, and Yellow."
EMBED_DIMS = 384


def reference_request(reference_chat: dict, **overrides) -> dict:
    req = {
        "model": CHAT_MODEL,
        "messages": reference_chat["messages"],
        "max_tokens": reference_chat["max_tokens"],
        "temperature": reference_chat["temperature"],
    }
    req.update(overrides)
    return req


def norm(v) -> float:
    return math.sqrt(sum(x * x for x in v))


def max_abs_diff(a, b) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


# ---- models ----------------------------------------------------------------


def test_models_list(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert CHAT_MODEL_ID in ids
    assert EMBED_MODEL_ID in ids
    for m in models.data:
        assert m.object == "model"
        assert isinstance(m.created, int)
        assert m.owned_by


@pytest.mark.parametrize(
    "name, expected",
    [
        (CHAT_MODEL, CHAT_MODEL_ID),
        (EMBED_MODEL, EMBED_MODEL_ID),
        # The SDK percent-encodes the slash of a canonical id (%2F).
        (CHAT_MODEL_ID, CHAT_MODEL_ID),
    ],
)
def test_models_retrieve(client, name, expected):
    m = client.models.retrieve(name)
    assert m.id == expected
    assert m.object == "model"


def test_models_retrieve_unknown(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.status_code == 404
    assert exc.value.code == "model_not_found"


# ---- chat ------------------------------------------------------------------


def test_chat_reference(client, reference_chat):
    r = client.chat.completions.create(**reference_request(reference_chat))
    assert r.object == "chat.completion"
    assert r.model == CHAT_MODEL_ID
    assert r.id
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == REFERENCE_TEXT
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert r.usage.prompt_tokens == 29
    assert r.usage.completion_tokens == 14
    assert r.usage.total_tokens == 43


def test_chat_stream_reference_with_usage(client, reference_chat):
    stream = client.chat.completions.create(
        **reference_request(reference_chat), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert len(chunks) >= 3
    ids = {c.id for c in chunks}
    assert len(ids) == 1, "every chunk carries the same id"
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.model == CHAT_MODEL_ID

    *body, last = chunks
    # The usage chunk: no choices, the totals.
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (29, 14, 43)
    # Every other chunk: exactly one choice, usage null.
    for c in body:
        assert c.usage is None
        assert len(c.choices) == 1 and c.choices[0].index == 0
    assert body[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == REFERENCE_TEXT
    finishes = [c.choices[0].finish_reason for c in body]
    assert finishes[-1] == "stop"
    assert all(f is None for f in finishes[:-1])


def test_chat_max_tokens_length(client, reference_chat):
    r = client.chat.completions.create(**reference_request(reference_chat, max_tokens=5))
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert REFERENCE_TEXT.startswith(r.choices[0].message.content)


def test_chat_n2_seed_reproducible(client):
    req = dict(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Write a short poem about the sea."}],
        max_tokens=16,
        temperature=1.0,
        n=2,
        seed=1234,
    )
    a = client.chat.completions.create(**req)
    b = client.chat.completions.create(**req)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.index for c in b.choices] == [0, 1]
    texts_a = [c.message.content for c in a.choices]
    texts_b = [c.message.content for c in b.choices]
    assert all(texts_a)
    assert texts_a == texts_b, "the same seed must give the same outputs"
    assert a.usage.completion_tokens <= 2 * 16


def test_chat_logprobs_top3(client, reference_chat):
    r = client.chat.completions.create(
        **reference_request(reference_chat, max_tokens=16), logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    entries = choice.logprobs.content
    assert entries, "logprobs.content must list the generated tokens"
    # One entry per generated token; an end-of-turn token that is counted in
    # usage may or may not be listed.
    assert r.usage.completion_tokens - 1 <= len(entries) <= r.usage.completion_tokens
    for e in entries:
        assert isinstance(e.token, str)
        assert e.logprob <= 0.0
        # The reference answer is ASCII: every token is whole UTF-8.
        assert e.bytes is not None and bytes(e.bytes) == e.token.encode("utf-8")
        assert len(e.top_logprobs) == 3
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True), "top_logprobs are ordered best first"
        # Temperature 0: the chosen token is the most likely one.
        assert e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-6)
        for t in e.top_logprobs:
            assert t.logprob <= 0.0
            assert t.bytes is not None
    # The tokens' bytes spell the content exactly.
    assert b"".join(bytes(e.bytes) for e in entries).decode("utf-8") == choice.message.content


@pytest.mark.parametrize(
    "stop, expected",
    [("Blue", "Primary colors are:\n\nRed, "), (["and Yellow", "zzz"], "Primary colors are:\n\nRed, Blue, ")],
    ids=["one-token", "multi-token-list"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_stop_sequences(client, reference_chat, stop, expected, stream):
    req = reference_request(reference_chat, stop=stop)
    stops = [stop] if isinstance(stop, str) else stop
    if stream:
        chunks = list(client.chat.completions.create(**req, stream=True))
        deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        for d in deltas:
            for s in stops:
                assert s not in d
        text = "".join(deltas)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["stop"]
    else:
        r = client.chat.completions.create(**req)
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
    for s in stops:
        assert s not in text
    assert text == expected


# ---- completions -----------------------------------------------------------

PROMPTS = ["The capital of France is", "Once upon a time"]


def test_completion_string_prompt(client):
    r = client.completions.create(model=CHAT_MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.model == CHAT_MODEL_ID
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.text
    assert c.finish_reason in ("stop", "length")
    assert c.logprobs is None
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_prompt_list_indexing(client):
    """Choices are numbered prompt_index * n + i (OpenAI's order)."""
    singles = [
        client.completions.create(model=CHAT_MODEL, prompt=p, max_tokens=8, temperature=0).choices[0].text
        for p in PROMPTS
    ]
    r = client.completions.create(model=CHAT_MODEL, prompt=PROMPTS, n=2, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = [c.text for c in r.choices]
    assert texts == [singles[0], singles[0], singles[1], singles[1]]


def test_completion_echo(client):
    plain = client.completions.create(model=CHAT_MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    echoed = client.completions.create(model=CHAT_MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPTS[0] + plain.choices[0].text


def check_legacy_logprobs(lp, text: str, k: int) -> None:
    """The parallel lists of the legacy completions logprobs object."""
    n = len(lp.tokens)
    assert n > 0
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    # The tokens spell the choice's text, and text_offset walks along it.
    assert "".join(lp.tokens) == text
    offset = lp.text_offset[0]
    for tok, off in zip(lp.tokens, lp.text_offset):
        assert off == offset
        offset += len(tok)
    for tok, lpv, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        if lpv is None:  # only the first echoed prompt token has no logprob
            continue
        assert lpv <= 0.0
        assert 1 <= len(top) <= k + 1
        assert all(v <= 0.0 for v in top.values())


def test_completion_logprobs_legacy(client):
    r = client.completions.create(model=CHAT_MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0, logprobs=2)
    c = r.choices[0]
    lp = c.logprobs
    check_legacy_logprobs(lp, c.text, 2)
    assert lp.text_offset[0] == 0
    assert all(v is not None for v in lp.token_logprobs)
    assert r.usage.completion_tokens - 1 <= len(lp.tokens) <= r.usage.completion_tokens
    for tok, lpv, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2
        # Temperature 0: the chosen token is the best alternative.
        best = max(top, key=top.get)
        assert best == tok
        assert top[best] == pytest.approx(lpv, abs=1e-6)


def test_completion_echo_logprobs(client):
    """echo + logprobs: the prompt's tokens come first, the first without a logprob."""
    r = client.completions.create(
        model=CHAT_MODEL, prompt=PROMPTS[0], max_tokens=4, temperature=0, logprobs=2, echo=True
    )
    c = r.choices[0]
    assert c.text.startswith(PROMPTS[0])
    lp = c.logprobs
    assert lp.text_offset[0] == 0
    assert lp.token_logprobs[0] is None
    assert all(v is not None for v in lp.token_logprobs[1:])
    check_legacy_logprobs(lp, c.text, 2)


def test_completion_logprobs_text_offset_is_in_characters(client):
    """text_offset indexes the choice's text as a string (characters, as
    OpenAI and vLLM count them), not its UTF-8 bytes. From the second token on
    only, so that this checks the offsets alone."""
    prompt = "Café crème"
    r = client.completions.create(
        model=CHAT_MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=1, echo=True
    )
    lp = r.choices[0].logprobs
    for i in range(1, len(lp.tokens) - 1):
        assert lp.text_offset[i + 1] - lp.text_offset[i] == len(lp.tokens[i]), (
            f"token {i} {lp.tokens[i]!r}: offsets {lp.text_offset}"
        )


def test_completion_stream(client):
    plain = client.completions.create(model=CHAT_MODEL, prompt=PROMPTS[1], max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model=CHAT_MODEL, prompt=PROMPTS[1], max_tokens=12, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )
    *body, last = chunks
    assert last.choices == []
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    for c in body:
        assert c.object == "text_completion"
        assert len(c.choices) == 1 and c.choices[0].index == 0
        assert c.usage is None
    assert "".join(c.choices[0].text for c in body) == plain.choices[0].text
    finishes = [c.choices[0].finish_reason for c in body]
    assert finishes[-1] == plain.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])


# ---- embeddings ------------------------------------------------------------


def embed_float(client, text):
    r = client.embeddings.create(model=EMBED_MODEL, input=text, encoding_format="float")
    return r.data[0].embedding


def test_embeddings_float(client, minilm_reference):
    r = client.embeddings.create(model=EMBED_MODEL, input=minilm_reference["sentences"][0], encoding_format="float")
    assert r.object == "list"
    assert r.model == EMBED_MODEL_ID
    assert len(r.data) == 1
    d = r.data[0]
    assert d.object == "embedding" and d.index == 0
    assert len(d.embedding) == EMBED_DIMS
    assert norm(d.embedding) == pytest.approx(1.0, abs=1e-5)
    # sentence-transformers' own vector for this sentence.
    assert max_abs_diff(d.embedding, minilm_reference["embeddings"][0]) < 1e-4
    assert r.usage.prompt_tokens == minilm_reference["token_counts"][0]
    assert r.usage.total_tokens == r.usage.prompt_tokens


def test_embeddings_base64_sdk_default(client):
    """Without encoding_format the SDK asks for base64 and decodes it to floats."""
    text = "The quick brown fox jumps over the lazy dog."
    floats = embed_float(client, text)
    r = client.embeddings.create(model=EMBED_MODEL, input=text)
    decoded = r.data[0].embedding
    assert isinstance(decoded, list) and len(decoded) == EMBED_DIMS
    assert max_abs_diff(decoded, floats) < 1e-6


def test_embeddings_base64_explicit(client):
    """An explicit encoding_format="base64" is returned as sent: little-endian float32."""
    text = "The quick brown fox jumps over the lazy dog."
    floats = embed_float(client, text)
    r = client.embeddings.create(model=EMBED_MODEL, input=text, encoding_format="base64")
    raw = r.data[0].embedding
    assert isinstance(raw, str)
    data = base64.b64decode(raw, validate=True)
    assert len(data) == 4 * EMBED_DIMS
    decoded = struct.unpack(f"<{EMBED_DIMS}f", data)
    assert max_abs_diff(decoded, floats) < 1e-6


def test_embeddings_dimensions(client):
    text = "Berlin is the capital of Germany."
    full = embed_float(client, text)
    r = client.embeddings.create(model=EMBED_MODEL, input=text, encoding_format="float", dimensions=64)
    v = r.data[0].embedding
    assert len(v) == 64
    assert norm(v) == pytest.approx(1.0, abs=1e-5)
    # Truncate, then re-normalise (as OpenAI's text-embedding-3 models do).
    n = norm(full[:64])
    assert max_abs_diff(v, [x / n for x in full[:64]]) < 1e-5


def test_embeddings_list_input(client, minilm_reference):
    texts = minilm_reference["sentences"][:3]
    r = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    for i, d in enumerate(r.data):
        assert len(d.embedding) == EMBED_DIMS
        assert max_abs_diff(d.embedding, minilm_reference["embeddings"][i]) < 1e-4
    assert r.usage.prompt_tokens == sum(minilm_reference["token_counts"][:3])


def test_embeddings_token_ids(client, minilm_reference):
    """Token ids (with [CLS]/[SEP], as given) embed like the text they spell."""
    ids = minilm_reference["token_ids"][0]
    r = client.embeddings.create(model=EMBED_MODEL, input=ids, encoding_format="float")
    assert len(r.data) == 1
    assert r.usage.prompt_tokens == len(ids)
    text_vec = embed_float(client, minilm_reference["sentences"][0])
    assert max_abs_diff(r.data[0].embedding, text_vec) < 1e-5


# ---- errors through the SDK ------------------------------------------------


def test_error_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    e = exc.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.param == "model"
    assert e.type == "invalid_request_error"
    assert "no-such-model" in e.message


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "user", "content": "Hi"}], temperature=2.5), "temperature"),
    ],
    ids=["empty-messages", "temperature-out-of-range"],
)
def test_error_bad_request(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=CHAT_MODEL, max_tokens=4, **kwargs)
    e = exc.value
    assert e.status_code == 400
    assert e.type == "invalid_request_error"
    assert e.param == param
    assert e.message


def test_error_context_window(client):
    # ~9000 tokens: " the" is one token of SmolLM2's BPE; the context is 8192.
    long = "the " * 9000
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": long}], max_tokens=8)
    e = exc.value
    assert e.code == "context_length_exceeded"
    assert "8192" in e.message
    counts = [int(x) for x in re.findall(r"\d+", e.message)]
    assert any(c > 8192 for c in counts), f"the message should give the prompt's token count: {e.message}"


def test_error_context_window_completions(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=CHAT_MODEL, prompt="the " * 9000, max_tokens=8)
    e = exc.value
    assert e.code == "context_length_exceeded"
    assert "8192" in e.message
    assert any(int(x) > 8192 for x in re.findall(r"\d+", e.message))


def test_error_chat_with_embedding_model(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=EMBED_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert exc.value.param == "model"
    assert "/v1/embeddings" in exc.value.message


def test_error_embeddings_with_chat_model(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=CHAT_MODEL, input="Hi", encoding_format="float")
    assert exc.value.param == "model"
    assert "/v1/chat/completions" in exc.value.message
