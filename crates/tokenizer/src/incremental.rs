//! Streaming detokenization.
//!
//! Decoding one token at a time is wrong for two reasons: byte-level BPE and byte-fallback tokens
//! can split one UTF-8 character across tokens, and SentencePiece decoders drop or add a leading
//! space depending on what precedes a token. Like vLLM / TGI we keep a small window of ids,
//! decode `ids[prefix_offset..read_offset]` (already emitted) and `ids[prefix_offset..]`, and emit
//! the difference only once it does not end in U+FFFD (an incomplete character).

use std::ops::Deref;

use crate::error::Result;
use crate::Tokenizer;

/// How many trailing prompt ids give the first generated token its context (vLLM uses 5).
const PROMPT_CONTEXT: usize = 5;

/// Generic over how the tokenizer is held: `&Tokenizer` for a local loop, `Arc<Tokenizer>` for
/// a decoder that lives inside a long-running request.
pub struct IncrementalDecoder<T: Deref<Target = Tokenizer>> {
    tok: T,
    ids: Vec<u32>,
    /// Start of the context window: text of ids before this is never decoded again.
    prefix_offset: usize,
    /// Ids before this have been emitted.
    read_offset: usize,
}

impl<T: Deref<Target = Tokenizer>> IncrementalDecoder<T> {
    /// `prompt_ids` are used only as decoding context (e.g. so a SentencePiece word-initial `▁`
    /// after the prompt decodes to a space); none of their text is emitted.
    pub fn new(tok: T, prompt_ids: &[u32]) -> Self {
        let context = &prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT)..];
        Self { tok, ids: context.to_vec(), prefix_offset: 0, read_offset: context.len() }
    }

    /// Add one generated id; returns the text it completes (possibly empty while a multi-byte
    /// character is still incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let (prefix_text, new_text) = self.window_texts()?;
        if new_text.len() <= prefix_text.len() || new_text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // `get` fails only if the prefix does not end on a char boundary of the longer text, i.e.
        // the decoder rewrote earlier text; hold back and let a later push or finish() emit it.
        match new_text.get(prefix_text.len()..) {
            Some(delta) if new_text.starts_with(&prefix_text) => {
                let delta = delta.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                Ok(delta)
            }
            _ => Ok(String::new()),
        }
    }

    /// Emit whatever is still held back (e.g. a trailing incomplete character, which decodes to
    /// U+FFFD exactly as a full `decode` would).
    pub fn finish(&mut self) -> Result<String> {
        let (prefix_text, new_text) = self.window_texts()?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(new_text
            .get(prefix_text.len()..)
            .filter(|_| new_text.starts_with(&prefix_text))
            .unwrap_or_default()
            .to_string())
    }

    fn window_texts(&self) -> Result<(String, String)> {
        let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..], true)?;
        Ok((prefix, full))
    }
}
