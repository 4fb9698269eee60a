//! Structured outputs: a request's constraint (a JSON schema, any JSON object, a regex, a
//! choice among strings, or a Lark grammar), compiled by llguidance against the model's own
//! tokenizer, and per request a [`Guide`] that says which tokens may come next and advances
//! on the token drawn: what vLLM, SGLang and llama.cpp do with the same library.
//!
//! - **Tokens as bytes.** Every token's bytes come from the tokenizer's HF JSON (byte-level
//!   BPE and SentencePiece byte fallback alike; GGUF tokenizers are converted to it on load).
//!   [`Grammars`] builds the token trie over them once per model.
//! - **JSON layout.** Schemas compile to compact JSON (`", "` and `": "` separators, no free
//!   whitespace) unless the schema's own `x-guidance` says otherwise: a small model offered
//!   free whitespace can emit newlines until it runs out of tokens.
//! - **Bounded work.** A constraint's text is at most [`MAX_CONSTRAINT_BYTES`]: compiling
//!   grows faster than its size (20,000 choices take 0.2 s, 200,000 a minute), so larger ones
//!   are refused before compiling. llguidance's parser limits cap the work per token. Front
//!   ends compile on their own threads through [`SharedGrammars`], never the engine's.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use shardline_tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum StructuredError {
    /// The constraint itself is malformed or unsatisfiable (a 400 for the request).
    #[error("invalid {kind}: {message}")]
    Invalid { kind: &'static str, message: String },
    /// The model's tokenizer cannot be described to the constraint engine.
    #[error("the tokenizer cannot drive structured outputs: {0}")]
    Tokenizer(String),
    /// A token the guide refused, or an error inside the parser while generating.
    #[error("structured output: {0}")]
    Generation(String),
}

pub type Result<T> = std::result::Result<T, StructuredError>;

/// What a request's output must match.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON Schema (`json_schema`).
    JsonSchema(Value),
    /// A regular expression the whole output matches.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect, with `start` as the start rule).
    Grammar(String),
}

/// The largest constraint compiled, in bytes of its text (the schema as JSON, the regex, the
/// grammar, or the choices together): about 4,000 choices or a 1,000-property schema, which
/// compile in tens of milliseconds on one core.
pub const MAX_CONSTRAINT_BYTES: usize = 64 * 1024;

impl Constraint {
    /// The bytes of its text, for [`MAX_CONSTRAINT_BYTES`].
    fn size(&self) -> usize {
        match self {
            Constraint::JsonObject => 0,
            Constraint::JsonSchema(schema) => schema.to_string().len(),
            Constraint::Regex(text) | Constraint::Grammar(text) => text.len(),
            Constraint::Choice(options) => options.iter().map(|o| o.len() + 1).sum(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonObject | Constraint::JsonSchema(_) => "JSON schema",
            Constraint::Regex(_) => "regex",
            Constraint::Choice(_) => "choice",
            Constraint::Grammar(_) => "grammar",
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar> {
        let invalid = |message: String| StructuredError::Invalid { kind: self.kind(), message };
        Ok(match self {
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Constraint::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(invalid(format!("a schema is a JSON object, not {schema}")));
                }
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Choice(options) => {
                if options.is_empty() {
                    return Err(invalid("no strings to choose from".into()));
                }
                // One regex of escaped alternatives: the lexer takes it as a single automaton,
                // where a grammar rule per string would give the parser a row of thousands of
                // items (beyond llguidance's 2,000) for a long list.
                let alternatives: Vec<String> = options.iter().map(|o| regex_syntax::escape(o)).collect();
                TopLevelGrammar::from_regex(&alternatives.join("|"))
            }
            Constraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
        })
    }
}

/// The schema with compact separators and no free whitespace, unless it sets its own.
fn compact(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    schema
}

/// The model's tokens for llguidance: the trie of their bytes, and our tokenizer for the
/// strings a grammar forces.
struct ModelTokens {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for ModelTokens {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.tokenizer.encode(&String::from_utf8_lossy(s), false).unwrap_or_default()
    }
}

/// One model's constraint compiler: its token trie and parser settings, built once.
pub struct Grammars {
    factory: ParserFactory,
    eos: Vec<u32>,
}

impl Grammars {
    /// For a model of `vocab_size` logits (at least the tokenizer's vocabulary: padded rows
    /// are never allowed).
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Grammars> {
        let bad = |e: String| StructuredError::Tokenizer(e);
        let tokenizer_json: Value =
            serde_json::from_str(&tokenizer.inner().to_string(false).map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&tokenizer_json).map_err(|e| bad(e.to_string()))?;
        if words.len() > vocab_size {
            return Err(bad(format!("{} tokens, more than the model's {vocab_size} logits", words.len())));
        }
        words.resize(vocab_size, Vec::new());
        let eos = tokenizer.eos_token_ids().to_vec();
        let first_eos = *eos.first().ok_or_else(|| bad("the tokenizer names no end-of-sequence token".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab_size as u32, first_eos), &words);
        let env: TokEnv = Arc::new(ModelTokens { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| bad(e.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory, eos })
    }

    /// Compiles `constraint` for one request: an error names what is wrong with it.
    pub fn guide(&self, constraint: &Constraint) -> Result<Guide> {
        let kind = constraint.kind();
        let size = constraint.size();
        if size > MAX_CONSTRAINT_BYTES {
            let message = format!("{size} bytes; at most {MAX_CONSTRAINT_BYTES} are compiled");
            return Err(StructuredError::Invalid { kind, message });
        }
        let parser = self
            .factory
            .create_parser(constraint.grammar()?)
            .map_err(|e| StructuredError::Invalid { kind, message: e.to_string() })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(message) = matcher.get_error() {
            return Err(StructuredError::Invalid { kind, message });
        }
        Ok(Guide { matcher, eos: self.eos.clone() })
    }
}

/// Which token ids may come next: one bit per id, 32 to a word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
}

impl TokenMask {
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    pub fn allows(&self, token: u32) -> bool {
        self.words.get(token as usize / 32).is_some_and(|w| w >> (token % 32) & 1 == 1)
    }

    /// How many ids it allows.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn from_vob(v: &SimpleVob) -> TokenMask {
        TokenMask { words: v.as_slice().to_vec() }
    }
}

/// One model's [`Grammars`], built on first use (the token trie takes a moment) and shared
/// by every thread that compiles constraints: cheap to clone.
#[derive(Clone)]
pub struct SharedGrammars {
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    built: Arc<OnceLock<std::result::Result<Grammars, String>>>,
}

impl SharedGrammars {
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Self {
        SharedGrammars { tokenizer, vocab_size, built: Arc::new(OnceLock::new()) }
    }

    /// [`Grammars::guide`], building the grammars first if no thread has yet.
    pub fn guide(&self, constraint: &Constraint) -> Result<Guide> {
        let built = self
            .built
            .get_or_init(|| Grammars::new(Arc::clone(&self.tokenizer), self.vocab_size).map_err(|e| e.to_string()));
        built.as_ref().map_err(|e| StructuredError::Tokenizer(e.clone()))?.guide(constraint)
    }
}

/// One request's position in its constraint. A clone is independent (the `n` samples of a
/// request each take one of the guide compiled once).
pub struct Guide {
    matcher: Matcher,
    eos: Vec<u32>,
}

impl Clone for Guide {
    fn clone(&self) -> Self {
        Guide { matcher: self.matcher.deep_clone(), eos: self.eos.clone() }
    }
}

impl Guide {
    /// The tokens that keep the output a valid prefix: end-of-sequence among them once the
    /// output is complete, and only it once nothing else may follow.
    pub fn allowed(&mut self) -> Result<TokenMask> {
        let mut mask = self.matcher.compute_mask_or_eos().map_err(|e| StructuredError::Generation(e.to_string()))?;
        if mask.get(self.eos[0] as usize) {
            // Every end-of-sequence id the model knows ends a complete output.
            self.eos.iter().for_each(|&e| mask.allow_token(e));
        }
        Ok(TokenMask::from_vob(&mask))
    }

    /// Moves past `token` (which [`Guide::allowed`] allowed).
    pub fn advance(&mut self, token: u32) -> Result<()> {
        let token = if self.eos.contains(&token) { self.eos[0] } else { token };
        self.matcher.consume_token(token).map_err(|e| StructuredError::Generation(e.to_string()))
    }

    /// Whether the output is complete and nothing may follow.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
