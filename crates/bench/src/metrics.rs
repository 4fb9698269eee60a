//! Per-request timelines → a run's numbers. Pure (no clock, no network) so every definition is
//! unit-tested on hand-made timelines.
//!
//! Definitions are vLLM `benchmark_serving`'s, so numbers compare with what people quote; the
//! names AIPerf (NVIDIA's load tool) gives the same quantities are noted on each, because its
//! "inter token latency" is *our TPOT*, not our ITL:
//!
//! | here | definition | AIPerf |
//! |---|---|---|
//! | TTFT | first token − send | Time to First Token |
//! | TPOT | (E2E − TTFT) / (output tokens − 1), per request with ≥ 2 tokens | Inter Token Latency |
//! | ITL | every gap between consecutive token messages, pooled over requests | Inter Chunk Latency |
//! | E2E | last token − send | Request Latency |
//!
//! All times are client-side: what a user of the endpoint sees, network and queueing included.

use std::collections::BTreeMap;
use std::str::FromStr;

/// What one request went through. Times are seconds since the run's origin (any fixed instant):
/// only differences matter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestRecord {
    /// Prompt tokens sent.
    pub input_tokens: usize,
    /// When the request was handed to the transport.
    pub send_s: f64,
    /// Client-side arrival of every streamed message that carried output (a "chunk": one token
    /// for Shardline's gRPC, one or more for SSE servers that merge tokens).
    pub token_times_s: Vec<f64>,
    /// Output tokens: the server's usage count when it sent one, else the tokens counted in
    /// the stream.
    pub output_tokens: usize,
    /// Prompt tokens the server took from its prefix cache, when it reports them.
    pub cached_tokens: Option<usize>,
    /// When the response ended (success or failure); bounds the run's wall time.
    pub end_s: f64,
    /// Why it failed (`grpc:Unavailable`, `http:500`, `transport`, …); None on success.
    pub error: Option<String>,
}

impl RequestRecord {
    /// Succeeded and produced at least one token (a stream without tokens has no timeline).
    pub fn is_ok(&self) -> bool {
        self.error.is_none() && !self.token_times_s.is_empty()
    }

    /// Time to first token. AIPerf: Time to First Token.
    pub fn ttft_s(&self) -> Option<f64> {
        self.token_times_s.first().map(|t| t - self.send_s).filter(|_| self.is_ok())
    }

    /// End-to-end latency: send to last token. AIPerf: Request Latency.
    pub fn e2e_s(&self) -> Option<f64> {
        self.token_times_s.last().map(|t| t - self.send_s).filter(|_| self.is_ok())
    }

    /// Time per output token after the first; None below two tokens (no decode phase).
    /// AIPerf: Inter Token Latency.
    pub fn tpot_s(&self) -> Option<f64> {
        let (ttft, e2e) = (self.ttft_s()?, self.e2e_s()?);
        (self.output_tokens >= 2).then(|| (e2e - ttft) / (self.output_tokens - 1) as f64)
    }

    /// Gaps between consecutive token messages. AIPerf: Inter Chunk Latency.
    pub fn itls_s(&self) -> impl Iterator<Item = f64> + '_ {
        let ok = self.is_ok();
        self.token_times_s.windows(2).filter(move |_| ok).map(|w| w[1] - w[0])
    }
}

/// Linear-interpolated percentile of sorted samples (numpy's default, `method="linear"`):
/// rank `p/100 · (n − 1)`, interpolated between its neighbours. `p` in [0, 100].
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Distribution summary of one latency metric, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Stats {
    /// From samples in seconds; None when there are none (e.g. TPOT when every request made
    /// one token), reported as `null` rather than a misleading 0.
    pub fn of_seconds(samples: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let mut ms: Vec<f64> = samples.into_iter().map(|s| s * 1e3).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        Some(Stats { mean, p50: percentile(&ms, 50.0), p90: percentile(&ms, 90.0), p99: percentile(&ms, 99.0) })
    }
}

/// Service-level objectives for goodput (`ttft=MS,tpot=MS,e2e=MS`, any subset); a request is
/// "good" when it meets every one given (vLLM's `--goodput`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// Whether a successful request meets every objective. A request with one token has no
    /// TPOT and so cannot miss a TPOT objective.
    pub fn met_by(&self, r: &RequestRecord) -> bool {
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (Some(l), Some(v)) => v * 1e3 <= l,
            _ => true,
        };
        r.is_ok()
            && within(self.ttft_ms, r.ttft_s())
            && within(self.tpot_ms, r.tpot_s())
            && within(self.e2e_ms, r.e2e_s())
    }
}

impl FromStr for Slo {
    type Err = String;

    fn from_str(s: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("`{part}` is not KEY=MS"))?;
            let ms: f64 = value.trim().parse().map_err(|_| format!("`{value}` is not a number of milliseconds"))?;
            if !(ms.is_finite() && ms > 0.0) {
                return Err(format!("`{part}`: the limit must be a positive number of milliseconds"));
            }
            let slot = match key.trim() {
                "ttft" => &mut slo.ttft_ms,
                "tpot" => &mut slo.tpot_ms,
                "e2e" | "e2el" => &mut slo.e2e_ms,
                other => return Err(format!("unknown SLO `{other}` (ttft, tpot or e2e)")),
            };
            *slot = Some(ms);
        }
        if slo == Slo::default() {
            return Err("give at least one of ttft=MS, tpot=MS, e2e=MS".into());
        }
        Ok(slo)
    }
}

/// One run's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Requests that succeeded with output.
    pub completed: usize,
    /// Failures by kind.
    pub errors: BTreeMap<String, usize>,
    /// Prompt tokens of completed requests.
    pub total_input_tokens: usize,
    /// Of those, prompt tokens the server reports it took from its prefix cache (None when it
    /// reports nothing).
    pub total_cached_tokens: Option<usize>,
    /// Output tokens of completed requests.
    pub total_output_tokens: usize,
    /// First send to last response end, over every request (failed ones too).
    pub duration_s: f64,
    /// Completed requests per second. AIPerf: Request Throughput.
    pub request_throughput: f64,
    /// Output tokens per second. AIPerf: Output Token Throughput.
    pub output_throughput: f64,
    /// Input plus output tokens per second.
    pub total_token_throughput: f64,
    /// Requests meeting every SLO per second; None without SLOs. AIPerf: Goodput.
    pub goodput: Option<f64>,
    pub ttft_ms: Option<Stats>,
    pub tpot_ms: Option<Stats>,
    pub itl_ms: Option<Stats>,
    pub e2e_ms: Option<Stats>,
}

impl Summary {
    pub fn failed(&self) -> usize {
        self.errors.values().sum()
    }
}

/// Summarizes a run's records (warm-up excluded by the caller).
pub fn summarize(records: &[RequestRecord], slo: Option<&Slo>) -> Summary {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.is_ok()).collect();
    let mut errors = BTreeMap::new();
    for r in records.iter().filter(|r| !r.is_ok()) {
        *errors.entry(r.error.clone().unwrap_or_else(|| "no_output".into())).or_insert(0) += 1;
    }
    let start = records.iter().map(|r| r.send_s).fold(f64::INFINITY, f64::min);
    let end = records.iter().map(|r| r.end_s).fold(f64::NEG_INFINITY, f64::max);
    let duration_s = if records.is_empty() { 0.0 } else { (end - start).max(0.0) };
    let per_s = |n: f64| if duration_s > 0.0 { n / duration_s } else { 0.0 };
    let total_input_tokens: usize = ok.iter().map(|r| r.input_tokens).sum();
    let reported: Vec<usize> = ok.iter().filter_map(|r| r.cached_tokens).collect();
    let total_cached_tokens = (!reported.is_empty()).then(|| reported.iter().sum());
    let total_output_tokens: usize = ok.iter().map(|r| r.output_tokens).sum();
    Summary {
        completed: ok.len(),
        errors,
        total_input_tokens,
        total_cached_tokens,
        total_output_tokens,
        duration_s,
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(total_output_tokens as f64),
        total_token_throughput: per_s((total_input_tokens + total_output_tokens) as f64),
        goodput: slo.map(|slo| per_s(ok.iter().filter(|r| slo.met_by(r)).count() as f64)),
        ttft_ms: Stats::of_seconds(ok.iter().filter_map(|r| r.ttft_s())),
        tpot_ms: Stats::of_seconds(ok.iter().filter_map(|r| r.tpot_s())),
        itl_ms: Stats::of_seconds(ok.iter().flat_map(|r| r.itls_s())),
        e2e_ms: Stats::of_seconds(ok.iter().filter_map(|r| r.e2e_s())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    fn assert_close(got: f64, want: f64, what: &str) {
        assert!(close(got, want), "{what}: got {got}, want {want}");
    }

    /// A successful request: sent at `send`, tokens at `times`, one token per message.
    fn req(input: usize, send: f64, times: &[f64]) -> RequestRecord {
        RequestRecord {
            input_tokens: input,
            send_s: send,
            token_times_s: times.to_vec(),
            output_tokens: times.len(),
            cached_tokens: None,
            end_s: *times.last().unwrap(),
            error: None,
        }
    }

    fn failed(send: f64, end: f64, kind: &str) -> RequestRecord {
        RequestRecord { input_tokens: 7, send_s: send, end_s: end, error: Some(kind.into()), ..Default::default() }
    }

    #[test]
    fn percentiles_interpolate_linearly_like_numpy() {
        let s = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [0, 50, 90, 99, 100]) = [1, 2.5, 3.7, 3.97, 4]
        for (p, want) in [(0.0, 1.0), (50.0, 2.5), (90.0, 3.7), (99.0, 3.97), (100.0, 4.0)] {
            assert_close(percentile(&s, p), want, &format!("p{p}"));
        }
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
        // numpy.percentile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 1000], 90) = 100.0, p99 = 910.0
        let t: Vec<f64> = (1..=10).map(|i| 10.0 * i as f64).chain([1000.0]).collect();
        assert_close(percentile(&t, 90.0), 100.0, "p90");
        assert_close(percentile(&t, 99.0), 910.0, "p99");
    }

    #[test]
    fn stats_are_in_milliseconds_and_absent_without_samples() {
        let s = Stats::of_seconds([0.004, 0.001, 0.003, 0.002]).unwrap();
        assert_close(s.mean, 2.5, "mean");
        assert_close(s.p50, 2.5, "p50");
        assert_close(s.p90, 3.7, "p90");
        assert_close(s.p99, 3.97, "p99");
        assert_eq!(Stats::of_seconds([]), None);
    }

    #[test]
    fn per_request_ttft_e2e_tpot_and_itl() {
        // Sent at 1.0; tokens at 1.1, 1.15, 1.25, 1.30.
        let r = req(16, 1.0, &[1.1, 1.15, 1.25, 1.30]);
        assert_close(r.ttft_s().unwrap(), 0.1, "ttft");
        assert_close(r.e2e_s().unwrap(), 0.3, "e2e");
        assert_close(r.tpot_s().unwrap(), 0.2 / 3.0, "tpot");
        let itl: Vec<f64> = r.itls_s().collect();
        assert_eq!(itl.len(), 3);
        for (got, want) in itl.iter().zip([0.05, 0.10, 0.05]) {
            assert_close(*got, want, "itl");
        }
        // One token: TTFT = E2E, no TPOT, no ITL.
        let one = req(16, 0.0, &[0.5]);
        assert_eq!(one.ttft_s(), one.e2e_s());
        assert_eq!(one.tpot_s(), None);
        assert_eq!(one.itls_s().count(), 0);
    }

    #[test]
    fn tpot_divides_by_the_token_count_not_the_message_count() {
        // An SSE server that merged 6 tokens into 3 messages: TPOT uses usage's 6 tokens, ITL
        // the 2 gaps between messages (vLLM's definitions).
        let mut r = req(4, 0.0, &[0.2, 0.4, 0.7]);
        r.output_tokens = 6;
        assert_close(r.tpot_s().unwrap(), 0.5 / 5.0, "tpot");
        assert_eq!(r.itls_s().count(), 2);
    }

    #[test]
    fn failed_requests_count_by_kind_and_only_toward_wall_time() {
        let records = vec![
            req(10, 0.0, &[0.1, 0.2]),
            failed(0.5, 3.0, "http:500"),
            failed(0.6, 0.7, "http:500"),
            failed(0.8, 0.9, "transport"),
            // Succeeded but streamed nothing: counted as an error, with no timeline.
            RequestRecord { input_tokens: 10, send_s: 1.0, end_s: 1.5, ..Default::default() },
        ];
        let s = summarize(&records, None);
        assert_eq!(s.completed, 1);
        assert_eq!(s.failed(), 4);
        let want = [("http:500".into(), 2), ("no_output".into(), 1), ("transport".into(), 1)];
        assert_eq!(s.errors, BTreeMap::from(want));
        assert_close(s.duration_s, 3.0, "duration runs to the last failure");
        assert_eq!((s.total_input_tokens, s.total_output_tokens), (10, 2));
        assert_close(s.ttft_ms.unwrap().mean, 100.0, "only the success has a TTFT");
        assert_eq!(s.goodput, None);
    }

    /// Three requests over a 2 s window, with every metric worked out by hand.
    #[test]
    fn run_summary_on_a_hand_made_timeline() {
        let records = vec![
            // TTFT 100 ms, E2E 400 ms, 4 tokens: TPOT 100 ms, ITLs 100, 100, 100.
            req(10, 0.0, &[0.1, 0.2, 0.3, 0.4]),
            // TTFT 300 ms, E2E 1000 ms, 3 tokens: TPOT 350 ms, ITLs 200, 500.
            req(20, 0.5, &[0.8, 1.0, 1.5]),
            // TTFT 1500 ms, E2E 1500 ms, 1 token: no TPOT, no ITL. Ends the run at 2.0 s.
            req(30, 0.5, &[2.0]),
        ];
        let s = summarize(&records, None);
        assert_eq!((s.completed, s.failed()), (3, 0));
        assert_close(s.duration_s, 2.0, "duration");
        assert_close(s.request_throughput, 1.5, "req/s");
        assert_close(s.output_throughput, 8.0 / 2.0, "out tok/s");
        assert_close(s.total_token_throughput, (60.0 + 8.0) / 2.0, "total tok/s");

        let ttft = s.ttft_ms.unwrap();
        assert_close(ttft.mean, (100.0 + 300.0 + 1500.0) / 3.0, "ttft mean");
        assert_close(ttft.p50, 300.0, "ttft p50");
        // rank 0.9 · 2 = 1.8 → 300 + 0.8 · 1200
        assert_close(ttft.p90, 1260.0, "ttft p90");
        assert_close(ttft.p99, 300.0 + 0.98 * 1200.0, "ttft p99");

        let tpot = s.tpot_ms.unwrap();
        assert_close(tpot.mean, 225.0, "tpot mean");
        assert_close(tpot.p50, 225.0, "tpot p50");
        assert_close(tpot.p99, 100.0 + 0.99 * 250.0, "tpot p99");

        // ITLs pooled: 100, 100, 100, 200, 500.
        let itl = s.itl_ms.unwrap();
        assert_close(itl.mean, 200.0, "itl mean");
        assert_close(itl.p50, 100.0, "itl p50");
        // rank 0.9 · 4 = 3.6 → 200 + 0.6 · 300
        assert_close(itl.p90, 380.0, "itl p90");
        assert_close(itl.p99, 200.0 + 0.96 * 300.0, "itl p99");

        let e2e = s.e2e_ms.unwrap();
        assert_close(e2e.mean, (400.0 + 1000.0 + 1500.0) / 3.0, "e2e mean");
        assert_close(e2e.p50, 1000.0, "e2e p50");
    }

    #[test]
    fn goodput_counts_requests_meeting_every_given_slo() {
        let records = vec![
            req(1, 0.0, &[0.1, 0.2, 0.3, 0.4]), // TTFT 100, TPOT 100, E2E 400
            req(1, 0.5, &[0.8, 1.0, 1.5]),      // TTFT 300, TPOT 350, E2E 1000
            req(1, 0.5, &[2.0]),                // TTFT 1500, no TPOT, E2E 1500
            failed(0.0, 0.1, "transport"),      // never good
        ];
        let goodput = |spec: &str| summarize(&records, Some(&spec.parse().unwrap())).goodput.unwrap();
        // Duration 2 s throughout.
        assert_close(goodput("ttft=350"), 2.0 / 2.0, "ttft only");
        assert_close(goodput("tpot=200"), 2.0 / 2.0, "tpot: the 1-token request cannot miss it");
        assert_close(goodput("e2e=1000"), 2.0 / 2.0, "e2e only");
        assert_close(goodput("ttft=2000,tpot=200"), 2.0 / 2.0, "both");
        assert_close(goodput("ttft=2000,tpot=400,e2e=2000"), 3.0 / 2.0, "all met");
        assert_close(goodput("ttft=50"), 0.0, "none met");
    }

    #[test]
    fn slo_parsing() {
        assert_eq!(
            "ttft=200, tpot=50,e2e=3000".parse::<Slo>(),
            Ok(Slo { ttft_ms: Some(200.0), tpot_ms: Some(50.0), e2e_ms: Some(3000.0) })
        );
        assert_eq!("tpot=20".parse::<Slo>(), Ok(Slo { tpot_ms: Some(20.0), ..Slo::default() }));
        for bad in ["", "ttft", "ttft=x", "itl=5", "ttft=-1", "e2e=0"] {
            assert!(bad.parse::<Slo>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn an_empty_run_has_zero_rates_and_no_stats() {
        let s = summarize(&[], Some(&Slo { ttft_ms: Some(1.0), ..Slo::default() }));
        assert_eq!((s.completed, s.duration_s, s.request_throughput), (0, 0.0, 0.0));
        assert_eq!(s.goodput, Some(0.0));
        assert_eq!(s.ttft_ms, None);
    }
}
