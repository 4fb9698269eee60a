//! Logprobs in the completions and chat-completions shapes.

use serde_json::{json, Map, Value};
use shardline_engine::TokenLogprobs;
use shardline_sampling::{ScoredToken, TokenLogprob};
use shardline_tokenizer::Tokenizer;

use crate::openai::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs, PromptLogprobsOut};

/// What a logprob of -inf is reported as (JSON has no infinities; vLLM does the same).
const MIN_LOGPROB: f32 = -9999.0;

pub(super) fn token_str(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

pub(super) fn finite(l: f32) -> f32 {
    if l.is_nan() || l < MIN_LOGPROB {
        MIN_LOGPROB
    } else {
        l
    }
}

/// Appends entries to legacy completions logprobs; `offset` is the running character offset.
pub(super) fn push_completion_logprobs(
    tok: &Tokenizer,
    entries: &[TokenLogprobs],
    offset: &mut usize,
    out: &mut CompletionLogprobs,
) {
    for e in entries {
        push_completion_entry(tok, e.token_id, Some((e.logprob, &e.top)), offset, out);
    }
}

/// Appends the prompt's tokens (for `echo` with `logprobs`) with `k` top entries each; the
/// first has no logprob. `scores` is the engine's prompt logprobs (the first `None`).
pub(super) fn push_prompt_logprobs(
    tok: &Tokenizer,
    prompt: &[u32],
    scores: &[Option<ScoredToken>],
    k: usize,
    offset: &mut usize,
    out: &mut CompletionLogprobs,
) {
    for (i, &id) in prompt.iter().enumerate() {
        let score = scores.get(i).and_then(Option::as_ref).map(|s| (s.logprob, &s.top[..k.min(s.top.len())]));
        push_completion_entry(tok, id, score, offset, out);
    }
}

fn push_completion_entry(
    tok: &Tokenizer,
    id: u32,
    score: Option<(f32, &[TokenLogprob])>,
    offset: &mut usize,
    out: &mut CompletionLogprobs,
) {
    let s = token_str(tok, id);
    let top = score.map(|(logprob, top_list)| {
        let mut top = Map::new();
        for t in top_list {
            top.entry(token_str(tok, t.token_id)).or_insert_with(|| finite(t.logprob).into());
        }
        top.entry(s.clone()).or_insert_with(|| finite(logprob).into());
        top
    });
    out.text_offset.push(*offset);
    *offset += s.chars().count();
    out.tokens.push(s);
    out.token_logprobs.push(score.map(|(logprob, _)| finite(logprob)));
    out.top_logprobs.push(top);
}

/// vLLM's `prompt_logprobs`: per prompt token, `null` for the first (and any not scored),
/// else token id → `{logprob, rank, decoded_token}` for the token itself and the `k` most
/// likely.
pub(super) fn vllm_prompt_logprobs(tok: &Tokenizer, scores: &[Option<ScoredToken>], k: usize) -> PromptLogprobsOut {
    let entry = |id: u32, logprob: f32, rank: u32| json!({"logprob": finite(logprob), "rank": rank, "decoded_token": token_str(tok, id)});
    scores
        .iter()
        .map(|score| {
            let s = score.as_ref()?;
            let mut map = Map::new();
            map.insert(s.token_id.to_string(), entry(s.token_id, s.logprob, s.rank));
            for (i, t) in s.top.iter().take(k).enumerate() {
                map.entry(t.token_id.to_string()).or_insert_with(|| entry(t.token_id, t.logprob, i as u32 + 1));
            }
            Some(map)
        })
        .collect::<Vec<Option<Map<String, Value>>>>()
}

pub(super) fn chat_logprobs(tok: &Tokenizer, entries: &[TokenLogprobs]) -> ChatLogprobs {
    let content = entries
        .iter()
        .map(|e| {
            let s = token_str(tok, e.token_id);
            ChatTokenLogprob {
                bytes: s.as_bytes().to_vec(),
                token: s,
                logprob: finite(e.logprob),
                top_logprobs: e
                    .top
                    .iter()
                    .map(|t| {
                        let s = token_str(tok, t.token_id);
                        ChatTopLogprob { bytes: s.as_bytes().to_vec(), token: s, logprob: finite(t.logprob) }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}
