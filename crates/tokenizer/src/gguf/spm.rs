//! `tokenizer.ggml.model = llama`: SentencePiece BPE vocabularies (Llama 1/2, Mistral, TinyLlama...).
//!
//! llama.cpp's "spm" tokenizer merges pieces by score. HF expresses the same thing as a `tokenizers`
//! BPE model whose merge list is derived from the vocabulary and ordered by the score of the merged
//! piece; we reproduce transformers' derivation (`generate_merges` in `tokenization_utils_base.py`,
//! used by `integrations/gguf/gguf_tokenizer_mapping.py`) so ids match transformers' GGUF loader.
//! Around the model: Metaspace `▁` replacement with a prefix space on the first word only, byte
//! fallback to `<0xNN>` tokens, and the Replace + ByteFallback + Fuse + Strip decoder.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{DecoderWrapper, Tokenizer};

const SPACE: char = '\u{2581}';

/// Merges implied by a scored vocabulary: every split of a piece into two in-vocabulary halves,
/// best piece score first, ties broken by longer left then longer right half (as transformers).
pub(crate) fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    // Python dict semantics: later duplicates overwrite the id / score but keep the first position.
    let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (id, (&token, &score)) in tokens.iter().zip(scores).enumerate() {
        if vocab.insert(token, id).is_none() {
            order.push(token);
        }
        score_of.insert(token, score);
    }

    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for piece in order {
        let score = score_of[piece];
        let mut local: Vec<(&str, &str, f32)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Stable sort, descending on (score, len(left), len(right)) with lengths in chars.
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f32)| (m.0.chars().count(), m.1.chars().count());
        b.2.total_cmp(&a.2).then_with(|| key(b).cmp(&key(a)))
    });
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

/// `file_merges`: merges stored in the file ("a b" strings), used as-is when present; otherwise
/// they are derived from `scores`.
pub(super) fn build(
    tokens: &[&str],
    file_merges: Option<&[&str]>,
    scores: Option<&[f32]>,
    unk_token: Option<&str>,
    add_space_prefix: bool,
) -> Result<Tokenizer, String> {
    // Without scores, earlier pieces are treated as better (the order SentencePiece writes them).
    let positional: Vec<f32>;
    let scores = match scores {
        Some(s) if s.len() == tokens.len() => s,
        Some(s) => return Err(format!("tokenizer.ggml.scores has {} entries for {} tokens", s.len(), tokens.len())),
        None => {
            positional = (0..tokens.len()).map(|i| -(i as f32)).collect();
            &positional
        }
    };
    let merges = match file_merges {
        Some(list) => list
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format!("merge {m:?} is not two space-separated tokens"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => merges_from_scores(tokens, scores),
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk_token {
        builder = builder.unk_token(unk.to_string());
    }
    let model = builder.build().map_err(|e| format!("invalid SentencePiece vocabulary: {e}"))?;

    let prepend = if add_space_prefix { PrependScheme::First } else { PrependScheme::Never };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE.to_string(), " ").map_err(|e| format!("decoder: {e}"))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        // Undo the prefix space the pre-tokenizer inserted before the first word.
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, prepend, false)));
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}
