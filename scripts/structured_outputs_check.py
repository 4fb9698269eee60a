#!/usr/bin/env python3
"""Structured outputs through the official `openai` client: 30 varied JSON schemas (nested
objects, arrays, enums, bounded numbers, optional fields, patterns) sent as
`response_format: {"type": "json_schema", ...}` to a running `shardline serve`, then tool calls
(required, named, auto; streamed and not). Every output and every call's arguments must parse
and validate with the `jsonschema` package. Prints one line per check and a summary, and exits
non-zero on any failure.

Not run in CI (needs `openai` and `jsonschema`). Usage:
    python3 -m venv .venv-dev && .venv-dev/bin/pip install openai jsonschema
    .venv-dev/bin/python scripts/structured_outputs_check.py http://127.0.0.1:8000 [--api-key KEY]
"""

import argparse
import json
import sys

import jsonschema
from openai import OpenAI

S = lambda **kw: {"type": "string", **kw}  # noqa: E731
I = lambda **kw: {"type": "integer", **kw}  # noqa: E731
N = lambda **kw: {"type": "number", **kw}  # noqa: E731


def obj(props, required=None, **kw):
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False, **kw}


SCHEMAS = [
    ("person", obj({"name": S(maxLength=30), "age": I(minimum=0, maximum=120)})),
    ("city", obj({"city": S(maxLength=30), "country": S(maxLength=30), "population": I(minimum=0)})),
    ("color", obj({"color": {"enum": ["red", "green", "blue", "yellow"]}})),
    ("boolean", obj({"answer": {"type": "boolean"}, "confidence": N(minimum=0, maximum=1)})),
    ("list of tags", obj({"tags": {"type": "array", "items": S(maxLength=15), "minItems": 1, "maxItems": 4}})),
    ("scores", obj({"scores": {"type": "array", "items": I(minimum=0, maximum=10), "maxItems": 5}})),
    ("nested address", obj({"name": S(maxLength=20), "address": obj({"street": S(maxLength=30), "zip": S(pattern="^[0-9]{5}$")})})),
    ("optional fields", obj({"title": S(maxLength=40), "subtitle": S(maxLength=40), "pages": I(minimum=1, maximum=2000)}, required=["title"])),
    ("book", obj({"title": S(maxLength=40), "author": S(maxLength=30), "year": I(minimum=1450, maximum=2030),
                  "genre": {"enum": ["fiction", "science", "history", "poetry"]}})),
    ("temperature", obj({"celsius": N(minimum=-90, maximum=60), "unit": {"const": "C"}})),
    ("rgb", obj({"r": I(minimum=0, maximum=255), "g": I(minimum=0, maximum=255), "b": I(minimum=0, maximum=255)})),
    ("todo list", obj({"items": {"type": "array", "maxItems": 3,
                                 "items": obj({"task": S(maxLength=25), "done": {"type": "boolean"}})}})),
    ("point", obj({"x": N(), "y": N()})),
    ("date", obj({"date": S(pattern="^20[0-9]{2}-[01][0-9]-[0-3][0-9]$")})),
    ("email", obj({"email": S(pattern="^[a-z]{1,10}@[a-z]{1,10}\\.(com|org)$")})),
    ("enum list", obj({"days": {"type": "array", "items": {"enum": ["mon", "tue", "wed", "thu", "fri"]}, "maxItems": 3}})),
    ("product", obj({"name": S(maxLength=30), "price": N(minimum=0, maximum=10000), "in_stock": {"type": "boolean"}})),
    ("weather", obj({"city": S(maxLength=20), "condition": {"enum": ["sunny", "rainy", "cloudy", "snowy"]},
                     "high": I(minimum=-50, maximum=60), "low": I(minimum=-50, maximum=60)})),
    ("recipe", obj({"dish": S(maxLength=30), "ingredients": {"type": "array", "items": S(maxLength=20), "maxItems": 5},
                    "minutes": I(minimum=1, maximum=600)})),
    ("matrix", obj({"rows": {"type": "array", "maxItems": 2, "items": {"type": "array", "items": I(minimum=0, maximum=9), "maxItems": 2}}})),
    ("nullable", obj({"nickname": {"type": ["string", "null"], "maxLength": 15}, "age": I(minimum=0, maximum=120)})),
    ("one of", obj({"shape": {"anyOf": [obj({"circle": N(minimum=0, maximum=100)}), obj({"square": N(minimum=0, maximum=100)})]}})),
    ("definitions", {"$defs": {"pet": obj({"kind": {"enum": ["cat", "dog"]}, "name": S(maxLength=15)})},
                     **obj({"pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}, "maxItems": 2}})}),
    ("deep nesting", obj({"a": obj({"b": obj({"c": obj({"d": I(minimum=0, maximum=9)})})})})),
    ("sentiment", obj({"text": S(maxLength=60), "sentiment": {"enum": ["positive", "negative", "neutral"]},
                       "score": N(minimum=-1, maximum=1)})),
    ("version", obj({"version": S(pattern="^[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}$")})),
    ("key-value", {"type": "object", "additionalProperties": I(minimum=0, maximum=100), "maxProperties": 3}),
    ("flags", obj({"read": {"type": "boolean"}, "write": {"type": "boolean"}, "exec": {"type": "boolean"}})),
    ("student", obj({"name": S(maxLength=25), "grades": {"type": "array", "items": I(minimum=0, maximum=100), "minItems": 1, "maxItems": 4},
                     "year": {"enum": [1, 2, 3, 4]}})),
    ("event", obj({"name": S(maxLength=30), "attendees": I(minimum=0, maximum=100000),
                   "location": obj({"lat": N(minimum=-90, maximum=90), "lon": N(minimum=-180, maximum=180)})})),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--api-key", default="x")
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args()
    base = args.url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    client = OpenAI(base_url=base, api_key=args.api_key, max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    valid = length = 0
    for name, schema in SCHEMAS:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Give an example {name} as JSON."}],
            max_tokens=args.max_tokens,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": name.replace(" ", "_"), "schema": schema, "strict": True}},
        )
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        try:
            jsonschema.validate(json.loads(text), schema)
            valid += 1
            print(f"ok    {name:16} {finish:6} {text}")
        except Exception as e:  # noqa: BLE001
            if finish == "length":
                length += 1
            print(f"FAIL  {name:16} {finish:6} {text!r}: {e}")
    print(f"\n{valid}/{len(SCHEMAS)} outputs parse and validate ({length} cut off by max_tokens)")
    calls_ok = check_tools(client, model)
    return 0 if valid == len(SCHEMAS) and calls_ok else 1


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
     "parameters": obj({"city": S(maxLength=30), "unit": {"enum": ["celsius", "fahrenheit"]}})}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
     "parameters": obj({"a": I(), "b": I()})}},
]


def check_tools(client, model):
    """Tool calls, whole and streamed: each assembles into arguments valid for the named tool."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    ok = True
    for prompt, choice in [("What is the weather in Oslo?", "required"),
                           ("What is 2 plus 40?", {"type": "function", "function": {"name": "add"}}),
                           ("What is the weather in Rome?", "auto")]:
        for stream in (False, True):
            args = dict(model=model, messages=[{"role": "user", "content": prompt}], tools=TOOLS,
                        tool_choice=choice, max_tokens=80, temperature=0)
            pieces = 0
            if stream:
                name, arguments, content, finish = None, "", "", None
                for chunk in client.chat.completions.create(stream=True, **args):
                    d = chunk.choices[0].delta if chunk.choices else None
                    for call in (d.tool_calls or []) if d else []:
                        name = call.function.name or name
                        arguments += call.function.arguments or ""
                        pieces += 1
                    content += (d.content or "") if d else ""
                    finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
            else:
                m = client.chat.completions.create(**args)
                msg, finish = m.choices[0].message, m.choices[0].finish_reason
                call = (msg.tool_calls or [None])[0]
                name, arguments, content = (call.function.name, call.function.arguments, msg.content) if call else (None, "", msg.content)
            label = f"tools {json.dumps(choice)[:24]:24} {'stream' if stream else 'whole ':6}"
            if name is None:
                good = choice == "auto" and not (content or "").lstrip().startswith("{")
                print(f"{'ok  ' if good else 'FAIL'}  {label} text: {content!r}")
                ok &= good
                continue
            try:
                jsonschema.validate(json.loads(arguments), schemas[name])
                assert finish == "tool_calls", finish
                deltas = f" in {pieces} deltas" if stream else ""
                print(f"ok    {label} {name}({arguments}){deltas}")
            except Exception as e:  # noqa: BLE001
                ok = False
                print(f"FAIL  {label} {name}({arguments!r}): {e}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
