"""Compute the tool-calling prompt goldens (tests/reference/qwen_tool_prompts.json):
the prompt text transformers' apply_chat_template(..., tools=...) renders with
Qwen2.5-Coder-0.5B-Instruct's chat template (read from its GGUF), for
conversations with tools, assistant tool calls and tool results. It calls
transformers' own renderer (render_jinja_template, what apply_chat_template
uses); loading the GGUF tokenizer through transformers needs torch, so the
ids are not taken from it. Run once, with transformers and gguf installed (not
needed at test time):

    python scripts/make-tool-goldens.py models-extra/Qwen/Qwen2.5-Coder-0.5B-Instruct
"""

import json
import sys
from pathlib import Path

import gguf
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

folder = Path(sys.argv[1])
reader = gguf.GGUFReader(next(folder.glob("*.gguf")))
field = reader.fields["tokenizer.chat_template"]
TEMPLATE = bytes(field.parts[field.data[0]]).decode()

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}

CASES = [
    {"name": "tools_user",
     "tools": [WEATHER, TIME],
     "messages": [{"role": "user", "content": "What is the weather in Paris?"}]},
    {"name": "tools_system_user",
     "tools": [WEATHER],
     "messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Weather in Oslo, in fahrenheit?"}]},
    {"name": "call_and_result",
     "tools": [WEATHER, TIME],
     "messages": [
         {"role": "user", "content": "Weather in Paris and the time in Tokyo?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
             {"id": "call_2", "type": "function",
              "function": {"name": "get_time", "arguments": "{\"tz\": \"Asia/Tokyo\"}"}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
         {"role": "tool", "tool_call_id": "call_2", "content": "09:30"}]},
]


def for_template(messages):
    """What the API's messages become for a template (as the server does):
    tool-call arguments as objects, null content as empty."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"],
                                                  "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
            if m.get("content") is None:
                m["content"] = ""
        out.append(m)
    return out


goldens = []
for case in CASES:
    text = render_jinja_template([for_template(case["messages"])], tools=case["tools"],
                                 chat_template=TEMPLATE, add_generation_prompt=True)[0][0]
    goldens.append({**case, "text": text})
out = Path(__file__).resolve().parents[1] / "tests" / "reference" / "qwen_tool_prompts.json"
out.write_text(json.dumps({"transformers": transformers.__version__, "cases": goldens}, indent=1) + "\n")
print(f"wrote {out}")
