//! Logprobs in the completions and chat-completions shapes.

use shardline_engine::TokenLogprobs;
use shardline_tokenizer::Tokenizer;

use crate::openai::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};

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
        let s = token_str(tok, e.token_id);
        let mut top = serde_json::Map::new();
        for t in &e.top {
            top.entry(token_str(tok, t.token_id)).or_insert_with(|| finite(t.logprob).into());
        }
        top.entry(s.clone()).or_insert_with(|| finite(e.logprob).into());
        out.text_offset.push(*offset);
        *offset += s.chars().count();
        out.tokens.push(s);
        out.token_logprobs.push(finite(e.logprob));
        out.top_logprobs.push(top);
    }
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
