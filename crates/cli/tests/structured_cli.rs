//! Structured outputs as clients ask for them, on SmolLM2-135M: OpenAI's `response_format`
//! and vLLM's `guided_*` / `structured_outputs` on HTTP, the same constraints over gRPC
//! (`generate --json-schema/--regex`), streamed or not, with `n` samples, on one process and
//! on a TP 2 × PP 2 group (same greedy text): every output satisfies its constraint, checked
//! with serde_json and by hand. Malformed constraints are 400s naming the problem.

mod common;

use common::{http, shardline, Server};
use serde_json::{json, Value};

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"enum": ["Paris", "Rome", "Oslo"]},
            "pets": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    })
}

fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let o = v.as_object().unwrap_or_else(|| panic!("not an object: {text}"));
    assert!(o.keys().all(|k| ["name", "age", "city", "pets"].contains(&k.as_str())), "{text}");
    assert!(o["name"].as_str().is_some_and(|s| s.chars().count() <= 20), "{text}");
    assert!(o["age"].as_i64().is_some_and(|a| (0..=120).contains(&a)), "{text}");
    assert!(["Paris", "Rome", "Oslo"].contains(&o["city"].as_str().unwrap_or("")), "{text}");
    if let Some(p) = o.get("pets") {
        assert!(p.as_array().is_some_and(|p| p.len() <= 3 && p.iter().all(Value::is_string)), "{text}");
    }
}

fn post(base: &str, path: &str, body: &Value) -> Value {
    let (status, text) = http(base, "POST", path, Some(&body.to_string()), None);
    assert_eq!(status, 200, "{body}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn chat(prompt: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 120, "temperature": 0});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Every constraint's greedy output on `base`, checked; returned for comparing layouts.
fn constrained_outputs(base: &str) -> Vec<String> {
    let person = json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "person", "strict": true, "schema": person_schema()}}});
    let mut outs = Vec::new();
    let v = post(base, "/v1/chat/completions", &chat("Describe a person as JSON.", person.clone()));
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    check_person(&text);
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    outs.push(text);

    let object = json!({"response_format": {"type": "json_object"}});
    let v = post(base, "/v1/chat/completions", &chat("Reply with the JSON object {\"ok\": true}.", object));
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}")).is_object(), "{text}");
    outs.push(text);

    let choice = json!({"prompt": "The capital of Italy is", "max_tokens": 8, "temperature": 0,
        "guided_choice": ["Paris", "Rome", "Madrid"]});
    let text = post(base, "/v1/completions", &choice)["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(["Paris", "Rome", "Madrid"].contains(&text.as_str()), "{text}");
    outs.push(text);

    let date = json!({"prompt": "Today's date:", "max_tokens": 16, "temperature": 0,
        "structured_outputs": {"regex": "20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]"}});
    let text = post(base, "/v1/completions", &date)["choices"][0]["text"].as_str().unwrap().to_string();
    let b = text.as_bytes();
    assert!(b.len() == 10 && text.starts_with("20") && b[4] == b'-' && b[7] == b'-', "{text}");
    outs.push(text);

    let grammar = json!({"prompt": "Is the sky blue? Answer:", "max_tokens": 8, "temperature": 0,
        "guided_grammar": "start: answer \".\"\nanswer: \"yes\" | \"no\""});
    let text = post(base, "/v1/completions", &grammar)["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text == "yes." || text == "no.", "{text}");
    outs.push(text);
    outs
}

#[test]
fn constrained_outputs_are_valid_streamed_sampled_and_on_every_layout() {
    let single = Server::start(&["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    let want = constrained_outputs(&single.http);

    // Streamed: the deltas add up to a valid object too.
    let mut body = chat(
        "Describe a person as JSON.",
        json!({"stream": true,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": person_schema()}}}),
    );
    body["max_tokens"] = json!(120);
    let (status, raw) = http(&single.http, "POST", "/v1/chat/completions", Some(&body.to_string()), None);
    assert_eq!(status, 200, "{raw}");
    let streamed: String = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(String::from))
        .collect();
    assert_eq!(streamed, want[0], "streamed deltas add up to the same object");

    // Sampled, several at once: each valid.
    let sampled = chat(
        "Describe a person as JSON.",
        json!({"n": 3, "temperature": 1.0, "seed": 5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": person_schema()}}}),
    );
    let v = post(&single.http, "/v1/chat/completions", &sampled);
    for c in v["choices"].as_array().unwrap() {
        let text = c["message"]["content"].as_str().unwrap();
        if c["finish_reason"] == "stop" {
            check_person(text);
        }
    }

    // gRPC, through `generate`.
    let out = shardline()
        .args(["generate", "--addr", &single.grpc, "--prompt", "A person as JSON:", "--max-tokens", "120"])
        .args(["--json-schema", &person_schema().to_string(), "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = |out: &std::process::Output| {
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["text"].as_str().unwrap().to_string()
    };
    check_person(&text(&out));
    let out = shardline()
        .args(["generate", "--addr", &single.grpc, "--prompt", "Pick:", "--max-tokens", "8", "--regex", "[ab]{3}"])
        .args(["--output", "json"])
        .output()
        .unwrap();
    let picked = text(&out);
    assert!(picked.len() == 3 && picked.chars().all(|c| c == 'a' || c == 'b'), "{picked}");

    // Malformed constraints: 400s that say what is wrong.
    for (extra, needle) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}),
            "invalid JSON schema",
        ),
        (json!({"response_format": {"type": "xml"}}), "response_format type `xml`"),
        (json!({"guided_regex": "([a-z"}), "invalid regex"),
        (json!({"guided_choice": []}), "invalid choice"),
        (json!({"guided_regex": "a", "guided_choice": ["b"]}), "one structured-output constraint"),
        (json!({"guided_json": "{not json"}), "guided_json is not a JSON schema"),
        // Too large to compile quickly: refused before compiling, naming the bound.
        (
            json!({"guided_choice": (0..5000).map(|i| format!("option number {i}")).collect::<Vec<_>>()}),
            "at most 65536",
        ),
    ] {
        let (status, text) =
            http(&single.http, "POST", "/v1/chat/completions", Some(&chat("hi", extra.clone()).to_string()), None);
        assert_eq!(status, 400, "{extra}: {text}");
        assert!(text.contains(needle), "{extra}: {text}");
    }
    let (_, metrics) = http(&single.http, "GET", "/metrics", None, None);
    assert!(metrics.contains("shardline:structured_output_masks_total"), "{metrics}");
    assert!(single.stop().success());

    // The same greedy outputs from a TP 2 × PP 2 group: masks travel to the sampling rank.
    let group =
        Server::start(&["serve", "--tp", "2", "--pp", "2", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    assert_eq!(constrained_outputs(&group.http), want, "tp 2 pp 2");
    assert!(group.stop().code().is_some(), "SIGTERM ends the group (bounded wait)");
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 20}}, "required": ["zone"]}}}])
}

/// A call's arguments, parsed and checked against `get_weather`'s schema by hand.
fn check_weather_call(call: &Value) {
    assert_eq!(call["type"], "function", "{call}");
    assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    match call["function"]["name"].as_str().unwrap() {
        "get_weather" => {
            assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 30), "{args}");
            assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()), "{args}");
        }
        "get_time" => assert!(args["zone"].is_string(), "{args}"),
        other => panic!("unknown tool {other}"),
    }
}

#[test]
fn tool_calls_come_back_valid_streamed_or_not() {
    let server = Server::start(&["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    let ask = |choice: Value, stream: bool| {
        json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "max_tokens": 80,
            "temperature": 0, "tools": weather_tools(), "tool_choice": choice, "stream": stream})
    };
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for choice in [json!("required"), named.clone()] {
        let v = post(&server.http, "/v1/chat/completions", &ask(choice.clone(), false));
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{choice}: {v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        let calls = c["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        check_weather_call(&calls[0]);
        if choice == named {
            assert_eq!(calls[0]["function"]["name"], "get_weather");
        }
        // Streamed: the deltas carry the same call.
        let (status, raw) =
            http(&server.http, "POST", "/v1/chat/completions", Some(&ask(choice.clone(), true).to_string()), None);
        assert_eq!(status, 200, "{raw}");
        let chunks: Vec<Value> =
            raw.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect();
        let streamed: Vec<Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0].as_object().cloned().map(Value::Object))
            .collect();
        // The first delta names the call, the next ones carry its arguments piece by piece.
        assert!(streamed.len() > 2, "the arguments stream in pieces: {raw}");
        assert!(streamed[0]["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{raw}");
        assert_eq!(streamed[0]["function"]["name"], calls[0]["function"]["name"], "{raw}");
        assert!(streamed[1..].iter().all(|d| d.get("id").is_none() && d["function"].get("name").is_none()));
        let joined: String = streamed.iter().map(|d| d["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(joined, calls[0]["function"]["arguments"].as_str().unwrap(), "streamed and whole calls agree");
        assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{raw}");
    }
    // auto: a call or text, never a malformed call; none: plain text.
    for choice in [json!("auto"), json!("none")] {
        let v = post(&server.http, "/v1/chat/completions", &ask(choice.clone(), false));
        let m = &v["choices"][0]["message"];
        match m["tool_calls"].as_array() {
            Some(calls) => calls.iter().for_each(check_weather_call),
            None => assert!(!m["content"].as_str().unwrap().trim_start().starts_with('{'), "{choice}: {v}"),
        }
    }
    // The call and its result go back in as history.
    let follow_up = json!({"messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}],
        "max_tokens": 20, "temperature": 0, "tools": weather_tools(), "tool_choice": "none"});
    let v = post(&server.http, "/v1/chat/completions", &follow_up);
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    for (choice, needle) in [
        (json!("sometimes"), "tool_choice `sometimes`"),
        (json!({"type": "function", "function": {"name": "nope"}}), "not among the tools"),
    ] {
        let (status, text) =
            http(&server.http, "POST", "/v1/chat/completions", Some(&ask(choice, false).to_string()), None);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(needle), "{text}");
    }
    assert!(server.stop().success());
}
