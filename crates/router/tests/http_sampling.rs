//! The OpenAI sampling options beyond the basics, over real sockets on the tiny random model
//! (as in `http_api.rs`): `echo`, presence and frequency penalties and `logit_bias` reaching
//! the sampler, and `n` samples sharing the prompt's K/V.

mod support;

use serde_json::{json, Value};
use support::{bounded, chunks, get, metric, post_ok, post_stream, start, text, BLOCK_SIZE};

/// `echo` prepends the prompt's text, given as text or as token ids, streamed or not.
#[tokio::test]
async fn echo_prepends_the_prompt() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let v = post_ok(addr, "/v1/completions", &json!({"prompt": "hello there", "max_tokens": 4, "temperature": 0}))
            .await;
        let plain = v["choices"][0]["text"].as_str().unwrap().to_string();
        let body = json!({"prompt": "hello there", "max_tokens": 4, "temperature": 0, "echo": true});
        let v = post_ok(addr, "/v1/completions", &body).await;
        assert_eq!(v["choices"][0]["text"], format!("hello there{plain}"));
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let text: String = chunks(&post_stream(addr, "/v1/completions", &streamed).await)
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
            .collect();
        assert_eq!(text, format!("hello there{plain}"));
        let tokenizer = shardline_tokenizer::Tokenizer::from_dir(server.dir.path()).unwrap();
        let ids = tokenizer.encode("hello there", false).unwrap();
        let v =
            post_ok(addr, "/v1/completions", &json!({"prompt": ids, "max_tokens": 4, "temperature": 0, "echo": true}))
                .await;
        assert!(v["choices"][0]["text"].as_str().unwrap().starts_with(&tokenizer.decode(&ids, false).unwrap()));
    })
    .await;
}

/// `echo` with `logprobs` lists the prompt's tokens first (the first without a logprob), then
/// the generated ones, streamed or not; their logprobs are vLLM's `prompt_logprobs` (chat
/// too). What the scores are is checked in the worker's layout tests.
#[tokio::test]
async fn echo_with_logprobs_scores_the_prompt() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let tokenizer = shardline_tokenizer::Tokenizer::from_dir(server.dir.path()).unwrap();
        let prompt = tokenizer.encode("hello there my friend", false).unwrap();
        let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": true, "echo": true,
            "logprobs": 2, "prompt_logprobs": 2});
        let v = post_ok(addr, "/v1/completions", &body).await;
        let choice = &v["choices"][0];
        let lp = &choice["logprobs"];
        let n = prompt.len();
        assert_eq!(lp["tokens"].as_array().unwrap().len(), n + 4, "{lp}");
        assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(), "{lp}");
        let vllm = choice["prompt_logprobs"].as_array().unwrap();
        assert_eq!(vllm.len(), n);
        assert!(vllm[0].is_null());
        for i in 1..n {
            let own = &vllm[i][prompt[i].to_string()];
            let (a, b) = (lp["token_logprobs"][i].as_f64().unwrap(), own["logprob"].as_f64().unwrap());
            assert!((a - b).abs() < 1e-6, "position {i}: {a} vs {b}");
            assert!(own["rank"].as_u64().unwrap() >= 1);
            assert!(lp["top_logprobs"][i].as_object().unwrap().len() <= 3);
        }
        let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
        let echoed = tokenizer.decode(&prompt, false).unwrap();
        assert_eq!(offsets[n] as usize, echoed.chars().count(), "generated tokens start after the prompt");

        // The same, streamed: the echo chunk carries the prompt's entries.
        let mut streamed = body.clone();
        streamed.as_object_mut().unwrap().remove("prompt_logprobs");
        streamed["stream"] = json!(true);
        let cs = chunks(&post_stream(addr, "/v1/completions", &streamed).await);
        let text: String = cs.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
        assert_eq!(text, choice["text"].as_str().unwrap());
        let streamed_logprobs: Vec<Value> = cs
            .iter()
            .filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array().cloned())
            .flatten()
            .collect();
        assert_eq!(&streamed_logprobs, lp["token_logprobs"].as_array().unwrap());

        // Chat returns them at the top level, for the rendered prompt.
        let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "prompt_logprobs": 1});
        let v = post_ok(addr, "/v1/chat/completions", &chat).await;
        let scores = v["prompt_logprobs"].as_array().unwrap();
        assert!(scores[0].is_null() && scores[1..].iter().all(|m| m.is_object()), "{v}");
        assert_eq!(scores.len() as u64, v["usage"]["prompt_tokens"].as_u64().unwrap());
    })
    .await;
}

/// OpenAI's penalties and logit_bias reach the sampler: a +100 bias makes every greedy token
/// the biased one (chat and completions), and penalties change a sampled output.
#[tokio::test]
async fn logit_bias_and_penalties_shape_the_output() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let tokenizer = shardline_tokenizer::Tokenizer::from_dir(server.dir.path()).unwrap();
        let forced = tokenizer.decode(&[42; 6], false).unwrap();
        let body = json!({"prompt": "hello", "max_tokens": 6, "temperature": 0, "logit_bias": {"42": 100}});
        let v = post_ok(addr, "/v1/completions", &body).await;
        assert_eq!(v["choices"][0]["text"], forced.as_str(), "{v}");
        let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
            "logit_bias": {"42": 100}});
        let v = post_ok(addr, "/v1/chat/completions", &chat).await;
        assert_eq!(v["choices"][0]["message"]["content"], forced.as_str(), "{v}");
        let sampled = |extra: Value| {
            let mut body = json!({"prompt": "hello", "max_tokens": 24, "temperature": 0.9, "seed": 7,
                "ignore_eos": true, "logprobs": 0});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            body
        };
        let plain = post_ok(addr, "/v1/completions", &sampled(json!({}))).await;
        let penalized =
            post_ok(addr, "/v1/completions", &sampled(json!({"presence_penalty": 2, "frequency_penalty": 2}))).await;
        let tokens = |v: &Value| v["choices"][0]["logprobs"]["token_logprobs"].clone();
        assert_ne!(tokens(&plain), tokens(&penalized));
        let again = post_ok(addr, "/v1/completions", &sampled(json!({}))).await;
        assert_eq!(tokens(&plain), tokens(&again), "seeded outputs repeat");
    })
    .await;
}

/// `n` samples: one choice each (index 0..n), seeded samples differing from each other and
/// repeating, usage counting the prompt once, streams interleaving choices, and the siblings
/// reusing the first sample's prompt K/V from the prefix cache.
#[tokio::test]
async fn n_samples_share_the_prompt_and_come_back_as_choices() {
    let server = start().await;
    let addr = server.addr;
    bounded(async {
        let prompt: Vec<u32> = (0..3 * BLOCK_SIZE as u32).map(|i| 20 + i).collect();
        let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 1.0, "seed": 3, "n": 3,
            "ignore_eos": true, "logprobs": 0});
        let hits_before = metric(&text(get(addr, "/metrics").await).await, "shardline:prefix_cache_hits_total");
        let v = post_ok(addr, "/v1/completions", &body).await;
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3, "{v}");
        let tokens: Vec<Value> = choices.iter().map(|c| c["logprobs"]["token_logprobs"].clone()).collect();
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i, "{v}");
            assert_eq!(c["finish_reason"], "length");
        }
        assert!(tokens[0] != tokens[1] || tokens[1] != tokens[2], "seeds differ per sample: {v}");
        assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
        assert_eq!(v["usage"]["completion_tokens"], 24);
        let hits_after = metric(&text(get(addr, "/metrics").await).await, "shardline:prefix_cache_hits_total");
        let shared = hits_after.unwrap_or(0.0) - hits_before.unwrap_or(0.0);
        assert!(shared >= (2 * 2 * BLOCK_SIZE) as f64, "2 siblings × at least 2 full prompt blocks: {shared}");
        let again = post_ok(addr, "/v1/completions", &body).await;
        let again: Vec<Value> =
            again["choices"].as_array().unwrap().iter().map(|c| c["logprobs"]["token_logprobs"].clone()).collect();
        assert_eq!(again, tokens, "seeded samples repeat");

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let events = post_stream(addr, "/v1/completions", &streamed).await;
        let streamed_chunks = chunks(&events);
        let finished: Vec<u64> = streamed_chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap().clone())
            .filter(|c| !c["finish_reason"].is_null())
            .map(|c| c["index"].as_u64().unwrap())
            .collect();
        let mut sorted = finished.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2], "each choice finishes once: {events:?}");
        assert_eq!(streamed_chunks.last().unwrap()["usage"]["completion_tokens"], 24);

        let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "n": 2,
            "temperature": 0});
        let v = post_ok(addr, "/v1/chat/completions", &chat).await;
        let c = v["choices"].as_array().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["message"], c[1]["message"], "greedy samples agree");
        let mut chat_stream = chat.clone();
        chat_stream["stream"] = json!(true);
        let roles = chunks(&post_stream(addr, "/v1/chat/completions", &chat_stream).await)
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap().clone())
            .filter(|c| c["delta"]["role"] == "assistant")
            .count();
        assert_eq!(roles, 2, "each choice opens with the assistant's role");
    })
    .await;
}
