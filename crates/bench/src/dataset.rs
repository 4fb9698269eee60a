//! Real prompts instead of random token ids: the ShareGPT conversations vLLM's
//! `benchmark_serving` uses, so lengths vary the way chat traffic's do.
//!
//! Each conversation gives one request, as in vLLM: the first human turn is the prompt (sent as
//! text), and the token count of the first reply after it is `max_tokens` (EOS ignored, so the
//! server makes exactly that many). Conversations with a prompt or reply under 4 tokens, a
//! prompt over 1024 tokens or more than 2048 in all are skipped (vLLM's filter: too short to
//! time, or too long for small models' contexts). Token counts come from the caller's
//! tokenizer, so this crate stays tokenizer-free.

use anyhow::{bail, Context};
use serde_json::Value;

use crate::workload::{Prompt, RequestSpec};

/// Shortest prompt and reply kept, in tokens.
pub const MIN_LEN: usize = 4;
/// Longest prompt kept, in tokens.
pub const MAX_PROMPT_LEN: usize = 1024;
/// Longest prompt + reply kept, in tokens.
pub const MAX_TOTAL_LEN: usize = 2048;

/// A prompt and the reply that followed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub prompt: String,
    pub reply: String,
}

/// Requests read from a file, replayed in a seeded order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `sharegpt:PATH`, for reports.
    pub name: String,
    pub requests: Vec<RequestSpec>,
}

fn role(turn: &Value) -> &str {
    turn["from"].as_str().or(turn["role"].as_str()).unwrap_or("")
}

/// The first human turn and the first reply after it, of every conversation that has both.
/// ShareGPT's roles are `human`/`gpt`; `user`/`assistant` (some re-exports) are read too.
pub fn parse_sharegpt(json: &str) -> anyhow::Result<Vec<Exchange>> {
    let root: Value = serde_json::from_str(json).context("not JSON")?;
    let Some(items) = root.as_array() else { bail!("a ShareGPT file is a JSON list of {{\"conversations\": [...]}}") };
    let mut out = Vec::new();
    for item in items {
        let Some(turns) = item["conversations"].as_array() else { continue };
        let Some(first) = turns.iter().position(|t| matches!(role(t), "human" | "user")) else { continue };
        let reply = turns[first + 1..].iter().find(|t| matches!(role(t), "gpt" | "assistant" | "chatgpt"));
        let (Some(prompt), Some(reply)) = (turns[first]["value"].as_str(), reply.and_then(|r| r["value"].as_str()))
        else {
            continue;
        };
        out.push(Exchange { prompt: prompt.to_string(), reply: reply.to_string() });
    }
    Ok(out)
}

/// One request per exchange that passes the length filter; `count_tokens` is the served
/// model's tokenizer.
pub fn requests(exchanges: &[Exchange], mut count_tokens: impl FnMut(&str) -> usize) -> Vec<RequestSpec> {
    exchanges
        .iter()
        .filter_map(|e| {
            let (prompt_len, reply_len) = (count_tokens(&e.prompt), count_tokens(&e.reply));
            let keep = prompt_len >= MIN_LEN
                && reply_len >= MIN_LEN
                && prompt_len <= MAX_PROMPT_LEN
                && prompt_len + reply_len <= MAX_TOTAL_LEN;
            keep.then(|| RequestSpec {
                prompt: Prompt::Text { text: e.prompt.clone(), tokens: prompt_len },
                max_tokens: reply_len,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace "tokens": easy to count by eye.
    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    const FILE: &str = r#"[
        {"id": "a", "conversations": [
            {"from": "human", "value": "What is the capital of France?"},
            {"from": "gpt", "value": "The capital of France is Paris."},
            {"from": "human", "value": "And of Spain?"},
            {"from": "gpt", "value": "Madrid."}]},
        {"id": "b", "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Name four primary colours please"},
            {"from": "gpt", "value": "Red, yellow, blue and green."}]},
        {"id": "no reply", "conversations": [{"from": "human", "value": "Anyone there at all?"}]},
        {"id": "gpt first", "conversations": [
            {"from": "gpt", "value": "Hello, how can I help?"},
            {"from": "human", "value": "Tell me a long story now"},
            {"from": "gpt", "value": "Once upon a time there was"}]},
        {"id": "too short", "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello! How are you today?"}]},
        {"id": "openai roles", "conversations": [
            {"role": "user", "value": "Write a haiku about rain"},
            {"role": "assistant", "value": "Soft rain on the roof"}]},
        {"id": "no conversations"}
    ]"#;

    #[test]
    fn first_human_turn_and_the_reply_after_it() {
        let ex = parse_sharegpt(FILE).unwrap();
        let prompts: Vec<&str> = ex.iter().map(|e| e.prompt.as_str()).collect();
        assert_eq!(
            prompts,
            [
                "What is the capital of France?",
                "Name four primary colours please",
                "Tell me a long story now",
                "Hi",
                "Write a haiku about rain"
            ]
        );
        assert_eq!(ex[0].reply, "The capital of France is Paris.");
        assert_eq!(ex[2].reply, "Once upon a time there was");
    }

    #[test]
    fn requests_are_text_prompts_with_the_reply_length_as_max_tokens() {
        let reqs = requests(&parse_sharegpt(FILE).unwrap(), words);
        // "Hi" is under 4 tokens: skipped.
        assert_eq!(reqs.len(), 4);
        assert_eq!(
            reqs[0],
            RequestSpec {
                prompt: Prompt::Text { text: "What is the capital of France?".into(), tokens: 6 },
                max_tokens: 6
            }
        );
        assert_eq!(reqs[1].max_tokens, 5);
        assert_eq!(reqs[3].prompt.input_tokens(), 5);
    }

    #[test]
    fn the_length_filter_is_vllms() {
        let long = |n: usize| vec!["w"; n].join(" ");
        let ex = |p: usize, r: usize| Exchange { prompt: long(p), reply: long(r) };
        let kept = |e: Exchange| requests(&[e], words).len() == 1;
        assert!(kept(ex(4, 4)));
        assert!(!kept(ex(3, 4)) && !kept(ex(4, 3)));
        assert!(kept(ex(1024, 1024)));
        assert!(!kept(ex(1025, 10)));
        assert!(!kept(ex(1000, 1049)));
    }

    #[test]
    fn files_that_are_not_sharegpt_are_refused() {
        assert!(parse_sharegpt("{").is_err());
        assert!(format!("{:#}", parse_sharegpt(r#"{"conversations": []}"#).unwrap_err()).contains("JSON list"));
        assert_eq!(parse_sharegpt("[]").unwrap(), []);
    }
}
