//! What a request asks the model to continue, and the one way it becomes token ids. Front ends
//! (HTTP, gRPC, `shardline run`) call this off the engine-core thread; the engine only ever sees
//! token ids.

use crate::chat::ChatMessage;
use crate::error::Result;
use crate::Tokenizer;

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized with the tokenizer's special tokens (e.g. BOS) added.
    Text(String),
    /// Messages rendered with the model's chat template and a generation prompt; the rendered
    /// text carries its own special tokens.
    Chat(Vec<ChatMessage>),
    /// Already-tokenized input, used as is.
    Tokens(Vec<u32>),
}

impl Tokenizer {
    /// The token ids the model is fed for `prompt`. Errors are the template's or the
    /// tokenizer's (an unsupported role, text the tokenizer rejects); the ids are not checked
    /// against the model's vocabulary here.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(text) => self.encode(text, true),
            Prompt::Chat(messages) => self.encode(&self.apply_chat_template(messages, true)?, false),
            Prompt::Tokens(ids) => Ok(ids.clone()),
        }
    }
}
