//! How far the block-format path (`--quantization auto`: a GGUF's own blocks, 8-bit
//! activations) strays from the f32 path (`--quantization none`: the same file dequantized), on
//! varied texts, teacher-forced: at every position both models see the same tokens and their
//! next-token distributions are compared. A dev tool, not a test:
//!
//!   cargo run --release -p shardline --example quant_quality -- [MODEL] [TOKENS_JSON]
//!
//! Prints greedy agreement (same argmax) and the mean and 99th percentile of
//! KL(p_f32 ‖ p_quantized) in nats. With TOKENS_JSON it also writes the token ids it used, so
//! `scripts/quant_quality.py` can score llama.cpp on exactly the same tokens.

use candle_core::DType;
use shardline_model::{BatchInput, Llama, ModelSpec, Quantization, SeqInput, SingleRank};
use shardline_tokenizer::Tokenizer;

const TEXTS: [&str; 8] = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Within fifty years presses were operating in more than two hundred cities, and the number of books in Europe grew from thousands to millions.",
    "def merge_sort(items):\n    if len(items) <= 1:\n        return items\n    mid = len(items) // 2\n    left = merge_sort(items[:mid])\n    right = merge_sort(items[mid:])\n    out = []\n    while left and right:\n        out.append(left.pop(0) if left[0] <= right[0] else right.pop(0))\n    return out + left + right\n",
    "La Révolution française commence en 1789 avec la convocation des États généraux. Elle met fin à la monarchie absolue, proclame la Déclaration des droits de l'homme et du citoyen et transforme profondément la société, l'administration et la vie politique du pays.",
    "Question: A train travels 180 kilometres in 2 hours and then 120 kilometres in 1.5 hours. What is its average speed over the whole journey?\nAnswer: The total distance is 300 kilometres and the total time is 3.5 hours, so the average speed is about 85.7 kilometres per hour.",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nGive me three tips for sleeping better.<|im_end|>\n<|im_start|>assistant\n1. Keep a regular schedule, going to bed and waking up at the same time every day.\n2. Avoid screens for an hour before bed.\n3. Keep your bedroom cool, dark and quiet.",
    "Photosynthesis converts light energy into chemical energy. In the light-dependent reactions, water is split and oxygen is released, while ATP and NADPH are produced. The Calvin cycle then uses these molecules to fix carbon dioxide into sugars.",
    "{\"name\": \"Ada Lovelace\", \"born\": 1815, \"known_for\": [\"Analytical Engine\", \"first published algorithm\"], \"languages\": [\"English\", \"French\"], \"notes\": \"Daughter of Lord Byron; collaborated with Charles Babbage.\"}",
    "Once upon a time, in a village at the edge of a great forest, there lived an old clockmaker who could mend anything that ticked. One winter evening a girl knocked on his door holding a silver watch that had stopped at midnight, and asked him whether time itself could be repaired.",
];

fn load(model: &str, quantization: Quantization) -> Llama {
    let mut spec = ModelSpec::cpu(model, DType::F32);
    spec.options.quantization = quantization;
    spec.load().expect("model loads")
}

/// Log-softmax of every row of `logits` (f64).
fn log_probs(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// Next-token logits after every prefix of `tokens`, one forward pass.
fn all_logits(model: &Llama, tokens: &[u32]) -> Vec<Vec<f32>> {
    const BLOCK: usize = 16;
    let blocks = tokens.len().div_ceil(BLOCK);
    let mut cache = model.new_cache(blocks, BLOCK).expect("cache");
    let seq = SeqInput {
        tokens: tokens.to_vec(),
        cached_len: 0,
        block_table: (0..blocks as u32).collect(),
        wants_logits: true,
    };
    let batch = BatchInput::new(vec![seq], BLOCK, blocks).expect("batch");
    let x = model.embed(tokens, &SingleRank).expect("embed");
    let x = model.forward_layers(x, &batch, &mut cache, &SingleRank).expect("forward");
    let rows: Vec<usize> = (0..tokens.len()).collect();
    model.logits(&x, &rows, &SingleRank).expect("logits").to_vec2().expect("f32 logits")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or(shardline_weights::SMOLLM2_ALIAS, String::as_str);
    let path = shardline_weights::resolve_model(model).expect("model resolves");
    let tokenizer = Tokenizer::from_path(&path).expect("tokenizer");
    let (f32_model, quant_model) = (load(model, Quantization::None), load(model, Quantization::Auto));
    eprintln!("quantized path holds {}", quant_model.weight_formats());
    let (mut agree, mut total, mut kls) = (0usize, 0usize, Vec::new());
    let mut all_tokens = Vec::new();
    for text in TEXTS {
        let tokens = tokenizer.encode(text, true).expect("tokenizes");
        let (want, got) = (all_logits(&f32_model, &tokens), all_logits(&quant_model, &tokens));
        for (w, g) in want.iter().zip(&got) {
            let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
            agree += usize::from(argmax(w) == argmax(g));
            total += 1;
            let (lw, lg) = (log_probs(w), log_probs(g));
            kls.push(lw.iter().zip(&lg).map(|(a, b)| a.exp() * (a - b)).sum::<f64>());
        }
        all_tokens.push(tokens);
    }
    kls.sort_by(f64::total_cmp);
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    let p99 = kls[(kls.len() * 99 / 100).min(kls.len() - 1)];
    println!(
        "shardline {}: {} texts, {total} positions | greedy agreement {:.1}% | KL mean {mean:.5} p99 {p99:.5} nats",
        quant_model.weight_formats(),
        TEXTS.len(),
        100.0 * agree as f64 / total as f64
    );
    if let Some(out) = args.get(1) {
        std::fs::write(out, serde_json::to_string(&all_tokens).expect("json")).expect("writes the tokens");
    }
}
