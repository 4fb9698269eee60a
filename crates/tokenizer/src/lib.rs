//! shardline-tokenizer: text ↔ token ids for the serving runtime.
//!
//! Loads a Hugging Face tokenizer directory (`tokenizer.json` + configs) or rebuilds the tokenizer
//! from a GGUF file's metadata the way llama.cpp does, and adds what serving needs on top of
//! `tokenizers`: BOS/EOS handling, streaming detokenization ([`IncrementalDecoder`]) and chat
//! template rendering compatible with transformers ([`Tokenizer::apply_chat_template`]).

mod chat;
mod error;
mod gguf;
mod hf;
mod incremental;
mod prompt;
pub mod testing;

use std::path::Path;

pub use chat::ChatMessage;
pub use error::{Result, TokenizerError};
pub use incremental::IncrementalDecoder;
pub use prompt::Prompt;

/// What a loader (HF directory or GGUF) produces; [`Tokenizer`] derives the rest.
pub(crate) struct Parts {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    /// `Some(true)`: BOS must be at the front with `add_special_tokens`; `Some(false)`: it must
    /// not be added even if the post-processor would; `None`: trust the post-processor.
    pub add_bos: Option<bool>,
    pub chat_template: Option<String>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: Option<bool>,
    chat_template: Option<String>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer of a model path: a directory (tokenizer.json + optional
    /// tokenizer_config.json / generation_config.json / config.json), a `*.gguf` file, or a JSON
    /// file in such a directory (its tokenizer.json, or the config.json a dummy-weights model is
    /// given by).
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_dir(path)
        } else if path.is_file() {
            if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
                // The configs next to the file apply too.
                return Self::from_dir(path.parent().unwrap_or(Path::new(".")));
            }
            Self::from_gguf(path)
        } else {
            Err(TokenizerError::PathNotFound { path: path.to_path_buf() })
        }
    }

    pub fn from_gguf(path: &Path) -> Result<Self> {
        Ok(Self::from_parts(gguf::load(path)?))
    }

    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(TokenizerError::PathNotFound { path: dir.to_path_buf() });
        }
        Ok(Self::from_parts(hf::load(dir)?))
    }

    /// Wrap an already-built `tokenizers::Tokenizer` (e.g. from [`testing::tiny_tokenizer_json`]).
    /// BOS/EOS are looked up by the given token strings.
    pub fn from_tokenizer(
        inner: tokenizers::Tokenizer,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        chat_template: Option<String>,
    ) -> Self {
        let bos = bos_token.and_then(|t| inner.token_to_id(t));
        let eos = eos_token.and_then(|t| inner.token_to_id(t)).into_iter().collect();
        Self::from_parts(Parts { inner, bos, eos, add_bos: None, chat_template })
    }

    fn from_parts(parts: Parts) -> Self {
        // Added tokens may reuse model ids or extend past them; the id space is what matters to
        // the model's embedding, so count up to the largest id.
        let vocab_size = parts.inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0);
        Self {
            inner: parts.inner,
            bos: parts.bos,
            eos: parts.eos,
            add_bos: parts.add_bos,
            chat_template: parts.chat_template,
            vocab_size,
        }
    }

    /// Encode `text`. Special token strings in it (e.g. `<|im_start|>`) become single special
    /// tokens. With `add_special_tokens`, the post-processor runs and BOS is prepended when the
    /// model asks for it (GGUF `add_bos_token`, tokenizer_config `add_bos_token`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode { len: text.len(), message: e.to_string() })?;
        let mut ids = encoding.get_ids().to_vec();
        if !add_special_tokens {
            return Ok(ids);
        }
        if let Some(bos) = self.bos {
            // The special-tokens mask tells a post-processor BOS from a `<s>` written in the text.
            let leading_added_bos = ids.first() == Some(&bos) && encoding.get_special_tokens_mask().first() == Some(&1);
            match self.add_bos {
                Some(true) if !leading_added_bos => ids.insert(0, bos),
                Some(false) if leading_added_bos => {
                    ids.remove(0);
                }
                _ => {}
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownTokenId { id, vocab_size: self.vocab_size });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode { count: ids.len(), message: e.to_string() })
    }

    /// Number of ids, including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// EOS ids: the tokenizer's eos plus generation_config.json `eos_token_id` entries (GGUF:
    /// eos plus end-of-turn / end-of-message ids).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Render the chat template like transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_chat(messages, add_generation_prompt, None)
    }

    /// The same with `tools` (OpenAI's `[{"type": "function", "function": {…}}]`) given to the
    /// template, as transformers' `apply_chat_template(messages, tools=…)`: templates with a
    /// tools section describe them in the model's own words; others ignore them.
    pub fn apply_chat_template_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_chat(messages, add_generation_prompt, Some(tools))
    }

    fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or(TokenizerError::NoChatTemplate)?;
        let bos = self.bos.and_then(|id| self.inner.id_to_token(id));
        let eos = self.eos.first().and_then(|&id| self.inner.id_to_token(id));
        let tokens = chat::TemplateTokens { bos_token: bos.as_deref(), eos_token: eos.as_deref() };
        chat::render(template, messages, add_generation_prompt, &tokens, tools)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes this tokenizer as a Hugging Face directory (`tokenizer.json` and a
    /// `tokenizer_config.json` with the special tokens, `add_bos_token` and chat template), so
    /// tools that load tokenizers with transformers (load generators such as AIPerf or
    /// GuideLLM) can count tokens of a GGUF model without reaching a model hub. Loading the
    /// directory back gives the same tokenizer.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TokenizerError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let json_path = dir.join("tokenizer.json");
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| TokenizerError::Load { path: json_path.clone(), message: e.to_string() })?;
        std::fs::write(&json_path, json).map_err(io(&json_path))?;
        let name = |id: Option<u32>| id.and_then(|id| self.inner.id_to_token(id));
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos),
            "eos_token": name(self.eos.first().copied()),
            "chat_template": self.chat_template,
        });
        if let Some(add_bos) = self.add_bos {
            config["add_bos_token"] = add_bos.into();
        }
        let config_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
        std::fs::write(&config_path, text + "\n").map_err(io(&config_path))
    }
}
