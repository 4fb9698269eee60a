//! Prometheus metrics in vLLM's shapes under the `shardline:` prefix, so dashboards built for
//! `vllm:` metrics need only the prefix changed. Gauges and the prefix-cache counters are read
//! from [`CoreStats`] at scrape time; histograms and the other counters are fed by the engine
//! core as tokens and requests finish.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use shardline_engine::GenerationOutput;

use crate::engine_core::CoreStats;

/// Latency buckets (seconds) from 1 ms to 80 s, as vLLM uses for TTFT/e2e.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/// Per-token buckets (seconds) for ITL and TPOT.
const TOKEN_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];

pub struct Metrics {
    registry: Registry,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub time_per_output_token: Histogram,
    pub e2e_latency: Histogram,
    pub queue_time: Histogram,
    pub prefill_time: Histogram,
    pub decode_time: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub request_success: IntCounterVec,
    pub aborted: IntCounter,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    preemptions: IntGauge,
    steps: IntGauge,
    prefix_cache_queries: IntCounter,
    prefix_cache_hits: IntCounter,
    structured_masks: IntCounter,
    structured_mask_us: IntCounter,
    recoveries: IntCounter,
    rank_restarts: IntCounter,
    recovered_requests: IntCounter,
    recovery_seconds: Gauge,
    /// Scrapes catch the mirrored counters up with the engine's; one at a time.
    render_lock: Mutex<()>,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique metric name");
    h
}

fn gauge<G: prometheus::core::Collector + Clone + 'static>(registry: &Registry, g: prometheus::Result<G>) -> G {
    let g = g.expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique metric name");
    c
}

impl Metrics {
    pub fn new(model: &str) -> Self {
        let mut labels = std::collections::HashMap::new();
        labels.insert("model_name".to_string(), model.to_string());
        let registry = Registry::new_custom(None, Some(labels)).expect("valid registry");
        let r = &registry;
        let request_success = IntCounterVec::new(
            Opts::new("shardline:request_success_total", "Finished requests, by finish reason."),
            &["finished_reason"],
        )
        .expect("valid counter");
        registry.register(Box::new(request_success.clone())).expect("unique metric name");
        Metrics {
            time_to_first_token: histogram(
                r,
                "shardline:time_to_first_token_seconds",
                "Request arrival to first token.",
                LATENCY_BUCKETS,
            ),
            inter_token_latency: histogram(
                r,
                "shardline:inter_token_latency_seconds",
                "Time between consecutive tokens of a request.",
                TOKEN_BUCKETS,
            ),
            time_per_output_token: histogram(
                r,
                "shardline:request_time_per_output_token_seconds",
                "Per request: (last token - first token) / (tokens - 1).",
                TOKEN_BUCKETS,
            ),
            e2e_latency: histogram(
                r,
                "shardline:e2e_request_latency_seconds",
                "Request arrival to last token.",
                LATENCY_BUCKETS,
            ),
            queue_time: histogram(
                r,
                "shardline:request_queue_time_seconds",
                "Arrival to first scheduled.",
                LATENCY_BUCKETS,
            ),
            prefill_time: histogram(
                r,
                "shardline:request_prefill_time_seconds",
                "First scheduled to first token.",
                LATENCY_BUCKETS,
            ),
            decode_time: histogram(
                r,
                "shardline:request_decode_time_seconds",
                "First token to last token.",
                LATENCY_BUCKETS,
            ),
            prompt_tokens: counter(r, "shardline:prompt_tokens_total", "Prompt tokens of admitted requests."),
            generation_tokens: counter(r, "shardline:generation_tokens_total", "Generated tokens."),
            aborted: counter(r, "shardline:request_aborted_total", "Requests cancelled by their client."),
            running: gauge(r, IntGauge::new("shardline:num_requests_running", "Requests in the running batch.")),
            waiting: gauge(r, IntGauge::new("shardline:num_requests_waiting", "Requests waiting to be scheduled.")),
            kv_usage: gauge(
                r,
                Gauge::new("shardline:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0 to 1)."),
            ),
            // Monotonic, but mirrored from the engine's own count, hence a gauge.
            preemptions: gauge(
                r,
                IntGauge::new(
                    "shardline:num_preemptions",
                    "Sequences preempted so far (KV blocks freed, recomputed later).",
                ),
            ),
            steps: gauge(r, IntGauge::new("shardline:engine_steps", "Forward passes run by the engine core so far.")),
            prefix_cache_queries: counter(
                r,
                "shardline:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache (each admission).",
            ),
            prefix_cache_hits: counter(
                r,
                "shardline:prefix_cache_hits_total",
                "Prompt tokens whose K/V came from the prefix cache.",
            ),
            structured_masks: counter(
                r,
                "shardline:structured_output_masks_total",
                "Token masks computed for structured outputs (one per constrained request per step).",
            ),
            structured_mask_us: counter(
                r,
                "shardline:structured_output_mask_microseconds_total",
                "Time rank 0 spent computing structured-output masks, in microseconds.",
            ),
            recoveries: counter(r, "shardline:recoveries_total", "Times the group lost a rank and formed again."),
            rank_restarts: counter(r, "shardline:rank_restarts_total", "Ranks replaced by a new process."),
            recovered_requests: counter(
                r,
                "shardline:recovered_requests_total",
                "Requests recomputed from their tokens after the group formed again.",
            ),
            recovery_seconds: gauge(
                r,
                Gauge::new("shardline:recovery_seconds", "How long the last recovery took, failure to group running."),
            ),
            render_lock: Mutex::new(()),
            request_success,
            registry,
        }
    }

    /// Records a finished request's timings.
    pub fn observe_finished(&self, out: &GenerationOutput) {
        let m = &out.metrics;
        self.time_to_first_token.observe(m.ttft_ms / 1e3);
        self.e2e_latency.observe(m.e2e_ms / 1e3);
        self.queue_time.observe(m.queue_ms / 1e3);
        self.prefill_time.observe(m.prefill_ms / 1e3);
        self.decode_time.observe(m.decode_ms / 1e3);
        if out.token_ids.len() > 1 {
            self.time_per_output_token.observe(m.decode_ms / 1e3 / (out.token_ids.len() - 1) as f64);
        }
        self.request_success.with_label_values(&[out.finish_reason.as_str()]).inc();
    }

    /// The text exposition format, gauges read from `stats` now.
    pub fn render(&self, stats: &CoreStats) -> String {
        let _one_at_a_time = self.render_lock.lock().expect("render lock");
        let catch_up = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        catch_up(&self.prefix_cache_queries, stats.prefix_cache_queries.load(Ordering::Relaxed));
        catch_up(&self.prefix_cache_hits, stats.prefix_cache_hits.load(Ordering::Relaxed));
        catch_up(&self.structured_masks, stats.structured_masks.load(Ordering::Relaxed));
        catch_up(&self.structured_mask_us, stats.structured_mask_us.load(Ordering::Relaxed));
        catch_up(&self.recoveries, stats.recoveries.load(Ordering::Relaxed));
        catch_up(&self.rank_restarts, stats.ranks_replaced.load(Ordering::Relaxed));
        catch_up(&self.recovered_requests, stats.requests_recomputed.load(Ordering::Relaxed));
        self.recovery_seconds.set(stats.last_recovery_ms.load(Ordering::Relaxed) as f64 / 1e3);
        self.running.set(stats.running.load(Ordering::Relaxed) as i64);
        self.waiting.set(stats.waiting.load(Ordering::Relaxed) as i64);
        self.kv_usage.set(stats.kv_usage());
        self.preemptions.set(stats.preemptions.load(Ordering::Relaxed) as i64);
        self.steps.set(stats.steps.load(Ordering::Relaxed) as i64);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).expect("utf-8 metrics")
    }
}
