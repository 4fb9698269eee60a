//! Chat template rendering, matching transformers' `apply_chat_template(..., tokenize=False)`.
//!
//! transformers renders with a sandboxed Jinja2 environment (`trim_blocks`, `lstrip_blocks`,
//! loop controls), passes `messages`, `add_generation_prompt`, the special token strings,
//! `tools` (OpenAI's list, or None), `documents=None`, and provides `raise_exception`, `strftime_now` and a `tojson`
//! filter that is Python's `json.dumps`. We reproduce that environment with minijinja, plus the
//! Python string/dict methods (`.strip()`, `.startswith()`, `.items()` ...) from minijinja-contrib.

mod pyjson;
mod strftime;

use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TokenizerError};

/// One conversation turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Special token strings the template may reference.
pub(crate) struct TemplateTokens<'a> {
    pub bos_token: Option<&'a str>,
    pub eos_token: Option<&'a str>,
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime::strftime_now);
    env.add_filter("tojson", pyjson::tojson);
    env
}

pub(crate) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    tokens: &TemplateTokens<'_>,
    tools: Option<&[serde_json::Value]>,
) -> Result<String> {
    let env = environment();
    let describe = |e: Error| {
        // Keep the whole cause chain: the template's own `raise_exception` message is in there.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        TokenizerError::ChatTemplate { message }
    };
    let tmpl = env.template_from_str(template).map_err(describe)?;
    let ctx = context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => tokens.bos_token.unwrap_or(""),
        eos_token => tokens.eos_token.unwrap_or(""),
        tools => tools.map_or(Value::from(()), Value::from_serialize),
        documents => Value::from(()),
    };
    tmpl.render(ctx).map_err(describe)
}
