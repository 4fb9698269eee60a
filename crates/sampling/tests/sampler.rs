//! Sampler behaviour: greedy, seeds, support restriction by top-k/top-p/min-p, temperature,
//! repetition, presence and frequency penalties, logit bias and logprobs.

use shardline_sampling::{log_softmax_top, logprob_of, Sampler, SamplingParams};

fn sampler(params: &SamplingParams) -> Sampler {
    Sampler::new(&params.sampler_settings(0))
}

/// Tokens at positions 0..n, each from its own (seed, position) draw.
fn draw(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
    let mut s = sampler(&params);
    (0..n).map(|position| s.sample(logits, &[], position).token_id).collect()
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
fn a_draw_depends_on_seed_and_position_only() {
    let flat = vec![0.0f32; 1000];
    let in_order = draw(seeded(7), &flat, 40);
    // Any order, any number of earlier calls, a fresh sampler: position p gives token p.
    let mut s = sampler(&seeded(7));
    for p in (0..40).rev() {
        assert_eq!(s.sample(&flat, &[], p).token_id, in_order[p], "position {p}");
        assert_eq!(s.sample(&flat, &[1, 2, 3], p).token_id, in_order[p], "history does not move the draw");
    }
    assert!(in_order.windows(2).any(|w| w[0] != w[1]), "positions draw differently");
    // An unseeded request uses the seed the engine gives it.
    let unseeded = SamplingParams::default();
    let mut a = Sampler::new(&unseeded.sampler_settings(11));
    let mut b = Sampler::new(&seeded(11).sampler_settings(99));
    assert_eq!(a.sample(&flat, &[], 3), b.sample(&flat, &[], 3));
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
    let needed = probs
        .iter()
        .position(|p| {
            cum += p;
            cum >= 0.2
        })
        .unwrap()
        + 1;
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
    let share = |temp: f32| {
        draw(SamplingParams { temperature: temp, ..seeded(9) }, &logits, n).iter().filter(|&&t| t == 0).count() as f64
            / n as f64
    };
    let expect = |temp: f64| 1.0 / (1.0 + (-1.0 / temp).exp());
    for temp in [0.5f32, 1.0, 2.0] {
        assert!((share(temp) - expect(temp as f64)).abs() < 0.02, "temperature {temp}");
    }
}

#[test]
fn repetition_penalty_discourages_seen_tokens() {
    let logits = [2.0f32, 1.9, -1.0];
    let p = SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy() };
    let mut s = sampler(&p);
    assert_eq!(s.sample(&logits, &[], 0).token_id, 0);
    assert_eq!(s.sample(&logits, &[0, 0, 2], 3).token_id, 1);
}

/// A sampler for a request whose prompt is `prompt_len` tokens.
fn after_prompt(params: &SamplingParams, prompt_len: usize) -> Sampler {
    let mut settings = params.sampler_settings(0);
    settings.prompt_len = prompt_len;
    Sampler::new(&settings)
}

#[test]
fn presence_and_frequency_penalties_count_generated_tokens_only() {
    let logits = [2.0f32, 1.6, 1.0];
    // Presence: token 0, generated once after a 1-token prompt, loses 0.5: 1.5 < 1.6.
    let presence = SamplingParams { presence_penalty: 0.5, ..SamplingParams::greedy() };
    assert_eq!(after_prompt(&presence, 1).sample(&logits, &[1, 0], 2).token_id, 1);
    // The same token in the prompt is not penalised.
    assert_eq!(after_prompt(&presence, 2).sample(&logits, &[0, 0], 2).token_id, 0);
    // Presence counts once however often; frequency per occurrence: 2.0 − 3·0.25 = 1.25 < 1.6.
    assert_eq!(after_prompt(&presence, 0).sample(&logits, &[0, 0, 0], 3).token_id, 1, "2.0 − 0.5 < 1.6");
    let frequency = SamplingParams { frequency_penalty: 0.25, ..SamplingParams::greedy() };
    assert_eq!(after_prompt(&frequency, 0).sample(&logits, &[0], 1).token_id, 0, "2.0 − 0.25 > 1.6");
    assert_eq!(after_prompt(&frequency, 0).sample(&logits, &[0, 0, 0], 3).token_id, 1, "2.0 − 0.75 < 1.6");
    // Negative values encourage repetition.
    let encourage = SamplingParams { presence_penalty: -1.5, ..SamplingParams::greedy() };
    assert_eq!(after_prompt(&encourage, 0).sample(&logits, &[2], 1).token_id, 2, "1.0 + 1.5 > 2.0");
    // Logprobs stay those of the raw distribution.
    let with_logprobs = SamplingParams { logprobs: Some(1), ..presence };
    let t = after_prompt(&with_logprobs, 0).sample(&logits, &[0], 1);
    assert_eq!(t.token_id, 1);
    assert!((t.logprob - logprob_of(&logits, 1)).abs() < 1e-6);
}

#[test]
fn logit_bias_bans_and_forces_tokens_in_greedy_and_sampled_modes() {
    let logits = [3.0f32, 2.0, 1.0, 0.0];
    let ban = SamplingParams { logit_bias: vec![(0, -100.0)], ..SamplingParams::greedy() };
    assert_eq!(sampler(&ban).sample(&logits, &[], 0).token_id, 1);
    let force = SamplingParams { logit_bias: vec![(3, 100.0)], ..seeded(5) };
    assert!(draw(force, &logits, 50).iter().all(|&t| t == 3), "a +100 bias leaves no other choice");
    let ban_sampled = SamplingParams { logit_bias: vec![(0, -100.0), (1, -100.0)], ..seeded(9) };
    assert!(draw(ban_sampled, &logits, 200).iter().all(|&t| t >= 2));
}

#[test]
fn penalty_and_bias_ranges_are_checked() {
    for (p, field) in [
        (SamplingParams { presence_penalty: 2.5, ..Default::default() }, "presence_penalty"),
        (SamplingParams { frequency_penalty: -2.1, ..Default::default() }, "frequency_penalty"),
        (SamplingParams { logit_bias: vec![(1, 101.0)], ..Default::default() }, "logit_bias"),
        (SamplingParams { logit_bias: vec![(50, 1.0)], ..Default::default() }, "logit_bias"),
    ] {
        let err = p.validate(10).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
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
    // logprobs 0: the chosen token's logprob without a top list.
    let mut s = sampler(&SamplingParams { temperature: 3.0, logprobs: Some(0), ..seeded(5) });
    let t = s.sample(&logits, &[], 0);
    assert!(t.top.is_empty());
    assert!((t.logprob - logprob_of(&logits, t.token_id)).abs() < 1e-6);
    // No logprobs asked: no log-sum-exp is spent on them.
    let t = sampler(&SamplingParams { temperature: 3.0, ..seeded(5) }).sample(&logits, &[], 0);
    assert!(t.top.is_empty() && t.logprob == 0.0);
}

/// Naive reference for the nucleus: the smallest best-first prefix with mass >= p.
fn nucleus(logits: &[f32], temperature: f64, p: f64) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| logits[b as usize].partial_cmp(&logits[a as usize]).unwrap().then(a.cmp(&b)));
    let max = logits[idx[0] as usize] as f64;
    let w: Vec<f64> = idx.iter().map(|&i| ((logits[i as usize] as f64 - max) / temperature).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut cum = 0.0;
    let n = w
        .iter()
        .position(|x| {
            cum += x / total;
            cum >= p
        })
        .unwrap()
        + 1;
    idx.truncate(n);
    idx
}

#[test]
fn large_vocab_nucleus_matches_reference() {
    // 152k tokens with a slowly decaying tail, so the nucleus outgrows the first sorted prefix.
    let vocab = 152_064;
    let logits: Vec<f32> = (0..vocab).map(|i| -((i * 2_654_435_761usize % vocab) as f32) * 2e-3).collect();
    let allowed = nucleus(&logits, 0.8, 0.5);
    assert!(allowed.len() > 64, "test must exercise the growing prefix, got {}", allowed.len());
    let params = SamplingParams { temperature: 0.8, top_p: 0.5, ..seeded(11) };
    let got = draw(params.clone(), &logits, 300);
    assert!(got.iter().all(|t| allowed.contains(t)));
    assert_eq!(got, draw(params, &logits, 300), "seeded top-p is reproducible");
}

#[test]
fn combined_filters_intersect() {
    let logits: Vec<f32> = (0..30).map(|i| -(i as f32) * 0.05).collect();
    // top_k keeps 0..10; min_p 0.7 keeps p_i/p_0 = exp(-0.05 i) >= 0.7 → i <= 7; top_p 0.99 keeps all.
    let got = draw(SamplingParams { top_k: 10, top_p: 0.99, min_p: 0.7, ..seeded(4) }, &logits, 3000);
    assert!(got.iter().all(|&t| t <= 7));
    assert!((0..=7).all(|t| got.contains(&t)));
}

#[test]
fn draws_follow_softmax_chi_square() {
    let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0];
    let temp = 0.7;
    let n = 20_000;
    let got = draw(SamplingParams { temperature: temp, ..seeded(123) }, &logits, n);
    let w: Vec<f64> = logits.iter().map(|&l| (l as f64 / temp as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    let chi2: f64 = (0..5)
        .map(|k| {
            let expected = n as f64 * w[k] / total;
            let observed = got.iter().filter(|&&t| t == k as u32).count() as f64;
            (observed - expected).powi(2) / expected
        })
        .sum();
    // 4 degrees of freedom: 18.47 is the 99.9% quantile.
    assert!(chi2 < 18.47, "chi2 = {chi2}");
}

#[test]
fn nan_and_masked_logits_are_never_drawn() {
    let logits = [f32::NAN, 0.0, f32::NEG_INFINITY, 0.5];
    let got = draw(seeded(8), &logits, 2000);
    assert!(got.iter().all(|&t| t == 1 || t == 3));
    assert_eq!(draw(SamplingParams::greedy(), &logits, 1), vec![3]);
    // Temperatures below vLLM's epsilon are greedy rather than overflowing.
    assert_eq!(draw(SamplingParams { temperature: 1e-7, ..seeded(1) }, &[1.0, 1.0e4, 2.0], 20), vec![1; 20]);
}

#[test]
fn requested_logprobs_are_raw_and_ordered() {
    let logits: Vec<f32> = (0..500).map(|i| ((i * 31) % 97) as f32 / 10.0).collect();
    let history = [96u32, 96, 3];
    let p = SamplingParams { logprobs: Some(4), temperature: 0.3, repetition_penalty: 2.0, ..seeded(6) };
    let mut s = sampler(&p);
    for position in 0..20 {
        let t = s.sample(&logits, &history, position);
        assert_eq!(t.top, log_softmax_top(&logits, 4), "penalty and temperature don't touch logprobs");
        assert!(t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!((t.logprob - logprob_of(&logits, t.token_id)).abs() < 1e-6);
    }
    let mut only_chosen = sampler(&SamplingParams { logprobs: Some(0), ..seeded(6) });
    let t = only_chosen.sample(&logits, &[], 0);
    assert!(t.top.is_empty());
    assert!(t.logprob <= 0.0 && t.logprob.is_finite());
}

#[test]
fn repetition_penalty_pushes_negative_logits_down() {
    // All logits negative: the penalty multiplies them, so seen token 0 drops below token 2.
    let logits = [-1.0f32, -3.0, -1.2];
    let p = SamplingParams { repetition_penalty: 1.3, ..SamplingParams::greedy() };
    let mut s = sampler(&p);
    assert_eq!(s.sample(&logits, &[0], 1).token_id, 2, "-1.0 * 1.3 = -1.3 < -1.2");
    assert_eq!(s.sample(&logits, &[0, 0, 0], 3).token_id, 2, "penalised once however often seen");
    assert_eq!(s.sample(&logits, &[0, 2], 2).token_id, 0, "-1.3 > -1.56");
}

#[test]
#[ignore = "timing; run with --release -- --ignored --nocapture"]
fn timing_large_vocab() {
    let vocab = 152_064;
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 100.0).collect();
    let history: Vec<u32> = (0..2000).map(|i| (i * 7919 % vocab) as u32).collect();
    let cases = [
        ("greedy", SamplingParams::greedy()),
        ("temperature only", seeded(1)),
        ("top_k 50", SamplingParams { top_k: 50, ..seeded(1) }),
        ("top_p 0.9", SamplingParams { top_p: 0.9, ..seeded(1) }),
        (
            "top_k 50 + top_p 0.9 + rep 1.1 + logprobs 5",
            SamplingParams { top_k: 50, top_p: 0.9, repetition_penalty: 1.1, logprobs: Some(5), ..seeded(1) },
        ),
    ];
    for (name, p) in cases {
        let mut s = sampler(&p);
        let n = 200;
        let start = std::time::Instant::now();
        for position in 0..n {
            std::hint::black_box(s.sample(&logits, &history, position));
        }
        println!("{name}: {:.1} us/token", start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
