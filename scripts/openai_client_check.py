#!/usr/bin/env python3
"""Checks a running `shardline serve` with the official `openai` Python client.

Calls /v1/models, /v1/completions and /v1/chat/completions, each plain and streamed (with
usage), plus logprobs, `echo` with logprobs (and vLLM's `prompt_logprobs`) and one bad request, and prints what came back. Exits non-zero on the
first failure.

Not run in CI (needs the `openai` package). Usage:
    python3 -m venv .venv-dev && .venv-dev/bin/pip install openai
    .venv-dev/bin/python scripts/openai_client_check.py http://127.0.0.1:8000 [--max-tokens 16] [--api-key KEY]
"""

import argparse
import sys

import openai
from openai import OpenAI


def section(title):
    print(f"\n== {title}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000 (with or without /v1)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--api-key", default="x", help="the server's --api-key (any value when it has none)")
    args = ap.parse_args()

    base = args.url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    client = OpenAI(base_url=base, api_key=args.api_key, max_retries=0, timeout=120)

    section("models")
    models = client.models.list()
    ids = [m.id for m in models.data]
    print(ids)
    assert len(ids) == 1, ids
    model = ids[0]

    section("completions")
    c = client.completions.create(
        model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0, logprobs=2
    )
    choice = c.choices[0]
    print(repr(choice.text), choice.finish_reason, c.usage)
    assert c.object == "text_completion"
    assert choice.finish_reason in ("stop", "length")
    assert c.usage.completion_tokens == len(choice.logprobs.tokens)
    print("logprobs:", list(zip(choice.logprobs.tokens, choice.logprobs.token_logprobs))[:4], "...")

    section("completions, streamed")
    text, finish, usage = "", None, None
    for chunk in client.completions.create(
        model=model,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    print(repr(text), finish, usage)
    assert text == choice.text, "greedy stream differs from the plain response"
    assert usage is not None and usage.completion_tokens == c.usage.completion_tokens

    section("completions, echo with logprobs (the prompt's tokens first)")
    e = client.completions.create(
        model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0, logprobs=2, echo=True,
        extra_body={"prompt_logprobs": 2},
    )
    lp = e.choices[0].logprobs
    n = e.usage.prompt_tokens
    assert e.choices[0].text == args.prompt + choice.text, e.choices[0].text
    assert len(lp.tokens) == n + e.usage.completion_tokens, (len(lp.tokens), e.usage)
    assert lp.token_logprobs[0] is None and all(x is not None for x in lp.token_logprobs[1:])
    assert lp.token_logprobs[n:] == choice.logprobs.token_logprobs, "generated logprobs as without echo"
    vllm = e.choices[0].model_extra["prompt_logprobs"]
    assert vllm[0] is None and len(vllm) == n
    print("prompt:", list(zip(lp.tokens, lp.token_logprobs))[:n])
    print("vLLM prompt_logprobs[1]:", vllm[1])
    streamed = []
    for chunk in client.completions.create(
        model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0, logprobs=2, echo=True, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.token_logprobs
    assert streamed == lp.token_logprobs, "streamed echo logprobs differ"
    print("streamed: the same", len(streamed), "entries")

    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colours."},
    ]

    section("chat completions")
    r = client.chat.completions.create(
        model=model,
        messages=messages,
        max_completion_tokens=args.max_tokens,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    msg = r.choices[0].message
    print(msg.role, repr(msg.content), r.choices[0].finish_reason, r.usage)
    assert r.object == "chat.completion" and msg.role == "assistant"
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens
    print("logprobs:", [(t.token, round(t.logprob, 3), [x.token for x in t.top_logprobs]) for t in lp[:3]], "...")

    section("chat completions, streamed")
    text, finish, role = "", None, None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=args.max_tokens, temperature=0, stream=True
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        role = delta.role or role
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    print(role, repr(text), finish)
    assert role == "assistant" and text == msg.content

    section("bad request")
    try:
        client.completions.create(model=model, prompt=args.prompt, temperature=-1)
    except openai.BadRequestError as e:
        print("400 as expected:", e.body)
    else:
        raise AssertionError("temperature=-1 was accepted")
    try:
        client.completions.create(model="no-such-model", prompt=args.prompt)
    except openai.NotFoundError as e:
        print("404 as expected:", e.body)
    else:
        raise AssertionError("an unknown model was accepted")

    print("\nall OpenAI client checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
