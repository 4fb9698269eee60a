//! Sampler behaviour: greedy, seeds, support restriction by top-k/top-p/min-p, temperature,
//! repetition penalty and logprobs.

use shardline_sampling::{log_softmax_top, logprob_of, Sampler, SamplingParams};

fn draw(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
    let mut s = Sampler::new(&params);
    (0..n).map(|_| s.sample(logits, &[]).token_id).collect()
}

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams { seed: Some(seed), ..Default::default() }
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let logits = [0.1, 3.0, -1.0, 3.0];
    assert_eq!(draw(SamplingParams::greedy(), &logits, 3), vec![1, 1, 1]);
    let top1 = SamplingParams { top_k: 1, temperature: 5.0, ..seeded(1) };
    assert_eq!(draw(top1, &logits, 5), vec![1; 5]);
}

#[test]
fn seeds_reproduce_and_differ() {
    let flat = vec![0.0f32; 100];
    assert_eq!(draw(seeded(42), &flat, 50), draw(seeded(42), &flat, 50));
    assert_ne!(draw(seeded(42), &flat, 50), draw(seeded(43), &flat, 50));
}

#[test]
fn filters_restrict_the_support() {
    let logits: Vec<f32> = (0..50).map(|i| -(i as f32) * 0.1).collect();
    let top_k = draw(SamplingParams { top_k: 5, ..seeded(1) }, &logits, 2000);
    assert!(top_k.iter().all(|&t| t < 5));
    assert!((0..5).all(|t| top_k.contains(&t)), "every allowed token shows up");
    // Probabilities of the first tokens: top_p 0.2 must keep only a short prefix.
    let probs: Vec<f64> = (0..50).map(|i| (logprob_of(&logits, i) as f64).exp()).collect();
    let mut cum = 0.0;
    let needed = probs.iter().position(|p| { cum += p; cum >= 0.2 }).unwrap() + 1;
    let top_p = draw(SamplingParams { top_p: 0.2, ..seeded(2) }, &logits, 2000);
    assert!(top_p.iter().all(|&t| (t as usize) < needed));
    let min_p = draw(SamplingParams { min_p: 0.75, ..seeded(3) }, &logits, 2000);
    // p_i / p_0 = exp(-0.1 i) >= 0.75  <=>  i <= 2.87
    assert!(min_p.iter().all(|&t| t <= 2));
    assert!(min_p.contains(&2));
}

#[test]
fn temperature_shapes_the_distribution() {
    let logits = [1.0f32, 0.0];
    let n = 20000;
    let share = |temp: f32| draw(SamplingParams { temperature: temp, ..seeded(9) }, &logits, n).iter().filter(|&&t| t == 0).count() as f64 / n as f64;
    let expect = |temp: f64| 1.0 / (1.0 + (-1.0 / temp).exp());
    for temp in [0.5f32, 1.0, 2.0] {
        assert!((share(temp) - expect(temp as f64)).abs() < 0.02, "temperature {temp}");
    }
}

#[test]
fn repetition_penalty_discourages_seen_tokens() {
    let logits = [2.0f32, 1.9, -1.0];
    let p = SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy() };
    let mut s = Sampler::new(&p);
    assert_eq!(s.sample(&logits, &[]).token_id, 0);
    assert_eq!(s.sample(&logits, &[0, 0, 2]).token_id, 1);
}

#[test]
fn logprobs_are_raw_log_softmax() {
    let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let top = log_softmax_top(&logits, 5);
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    let mut sorted: Vec<(f32, u32)> = logits.iter().enumerate().map(|(i, &l)| (l, i as u32)).collect();
    sorted.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    for (t, (l, id)) in top.iter().zip(&sorted) {
        assert_eq!(t.token_id, *id);
        assert!((t.logprob as f64 - (*l as f64 - lse)).abs() < 1e-6);
    }
    let total: f64 = (0..1000).map(|i| (logprob_of(&logits, i) as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-5);
    // The chosen token's logprob is filled even when no top list was asked for.
    let mut s = Sampler::new(&SamplingParams { temperature: 3.0, ..seeded(5) });
    let t = s.sample(&logits, &[]);
    assert!(t.top.is_empty());
    assert!((t.logprob - logprob_of(&logits, t.token_id)).abs() < 1e-6);
}
