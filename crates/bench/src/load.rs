//! How load is offered: a closed loop of N users, or open-loop Poisson arrivals.
//!
//! The two answer different questions. A closed loop (`--concurrency N`) keeps exactly N
//! requests in flight, so it measures what N simultaneous users get, and it can never overload
//! the server: a slow server just gets fewer requests. Open-loop arrivals (`--request-rate R`)
//! come at R/s whether or not the server keeps up, like independent users do, so queueing
//! (and TTFT) grows without bound past saturation; the inter-arrival gaps are exponential,
//! which makes the arrival count Poisson. Generic over the send function, so the schedules are
//! tested without a network.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::RequestRecord;
use crate::workload::{RequestSpec, Workload};

/// A boxed request future, for send functions whose futures are not nameable.
pub type SendFuture = Pin<Box<dyn Future<Output = RequestRecord> + Send>>;

/// One run's offered load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Closed loop: this many workers, each sending its next request when its previous ends.
    Concurrency(usize),
    /// Open loop: Poisson arrivals at `rate` requests/s (infinite: all at once), with at most
    /// `max_concurrency` in flight (arrivals beyond wait, and their clock starts when sent).
    Rate { rate: f64, max_concurrency: Option<usize> },
}

/// When a run stops sending (requests in flight then finish and count).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this many requests.
    Requests(usize),
    /// Once this long has passed since the run started.
    Duration(Duration),
}

/// Exponential inter-arrival gaps of a Poisson process with `rate` arrivals per second.
pub struct PoissonArrivals {
    rate: f64,
    rng: StdRng,
}

impl PoissonArrivals {
    /// `rate` > 0; infinity gives zero gaps (every request at once, vLLM's `inf`).
    pub fn new(rate: f64, seed: u64) -> PoissonArrivals {
        assert!(rate > 0.0, "request rate must be positive");
        PoissonArrivals { rate, rng: StdRng::seed_from_u64(seed) }
    }
}

impl Iterator for PoissonArrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.rate.is_infinite() {
            return Some(Duration::ZERO);
        }
        // Inverse CDF: −ln(1 − U)/λ with U in [0, 1), so the log's argument is never 0.
        let u: f64 = self.rng.random();
        Some(Duration::from_secs_f64(-(1.0 - u).ln() / self.rate))
    }
}

/// Hands out the workload's requests until the stop condition, to any number of senders.
struct Issuer {
    workload: Mutex<Workload>,
    issued: AtomicUsize,
    stop: Stop,
    start: Instant,
}

impl Issuer {
    fn claim(&self) -> Option<RequestSpec> {
        match self.stop {
            Stop::Requests(n) => {
                self.issued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |i| (i < n).then_some(i + 1)).ok()?;
            }
            Stop::Duration(d) if self.start.elapsed() >= d => return None,
            Stop::Duration(_) => {}
        }
        Some(self.workload.lock().expect("workload lock").next_request())
    }

    /// Whether no request is left (so an open loop need not wait for another arrival).
    fn exhausted(&self) -> bool {
        match self.stop {
            Stop::Requests(n) => self.issued.load(Ordering::SeqCst) >= n,
            Stop::Duration(_) => self.past_deadline(),
        }
    }

    /// A duration-bound run is over: requests still waiting for a slot are not sent.
    fn past_deadline(&self) -> bool {
        matches!(self.stop, Stop::Duration(d) if self.start.elapsed() >= d)
    }
}

/// Runs one load schedule to completion and returns every request's record. `send` performs
/// one request; `arrival_seed` seeds the Poisson gaps (unused for a closed loop).
///
/// Open loop with a duration: arrivals still waiting for a `max_concurrency` slot at the
/// deadline are dropped unsent (and unrecorded). An infinite rate with a duration needs a
/// `max_concurrency`, or it would queue requests without bound.
pub async fn drive<S, F>(load: Load, stop: Stop, workload: Workload, arrival_seed: u64, send: S) -> Vec<RequestRecord>
where
    S: Fn(RequestSpec) -> F + Send + Sync + 'static,
    F: Future<Output = RequestRecord> + Send + 'static,
{
    let workload = Mutex::new(workload);
    let issuer = Arc::new(Issuer { workload, issued: AtomicUsize::new(0), stop, start: Instant::now() });
    let send = Arc::new(send);
    let mut tasks: JoinSet<Vec<RequestRecord>> = JoinSet::new();
    match load {
        Load::Concurrency(n) => {
            for _ in 0..n.max(1) {
                let (issuer, send) = (Arc::clone(&issuer), Arc::clone(&send));
                tasks.spawn(async move {
                    let mut records = Vec::new();
                    while let Some(req) = issuer.claim() {
                        records.push(send(req).await);
                    }
                    records
                });
            }
        }
        Load::Rate { rate, max_concurrency } => {
            let unbounded = rate.is_infinite() && max_concurrency.is_none() && matches!(stop, Stop::Duration(_));
            assert!(!unbounded, "an infinite request rate for a duration needs a max concurrency");
            let slots = max_concurrency.map(|m| Arc::new(Semaphore::new(m.max(1))));
            let mut gaps = PoissonArrivals::new(rate, arrival_seed);
            let mut next_arrival = tokio::time::Instant::now();
            while let Some(req) = issuer.claim() {
                // Every request of an infinite rate is due now: waiting for its slot here rather
                // than in its task is the same schedule, without a backlog of waiting tasks.
                let held = match &slots {
                    Some(s) if rate.is_infinite() => Some(Arc::clone(s).acquire_owned().await.expect("never closed")),
                    _ => None,
                };
                let (send, slots, deadline) = (Arc::clone(&send), slots.clone(), Arc::clone(&issuer));
                tasks.spawn(async move {
                    let _slot = match (held, slots) {
                        (Some(p), _) => Some(p),
                        (None, Some(s)) => Some(s.acquire_owned().await.expect("semaphore never closed")),
                        (None, None) => None,
                    };
                    if deadline.past_deadline() {
                        return Vec::new();
                    }
                    vec![send(req).await]
                });
                if issuer.exhausted() {
                    break;
                }
                next_arrival += gaps.next().expect("endless");
                tokio::time::sleep_until(next_arrival).await;
            }
        }
    }
    let mut records = Vec::new();
    while let Some(done) = tasks.join_next().await {
        records.extend(done.expect("a request task panicked"));
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{token_range, WorkloadSpec};

    #[test]
    fn poisson_gaps_have_the_asked_mean_rate_and_exponential_spread() {
        for rate in [0.5, 4.0, 100.0] {
            let n = 200_000;
            let gaps: Vec<f64> = PoissonArrivals::new(rate, 42).take(n).map(|d| d.as_secs_f64()).collect();
            let mean = gaps.iter().sum::<f64>() / n as f64;
            let measured_rate = 1.0 / mean;
            assert!((measured_rate / rate - 1.0).abs() < 0.01, "rate {rate}: measured {measured_rate}");
            // Exponential: standard deviation equals the mean (coefficient of variation 1).
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
            assert!((var.sqrt() / mean - 1.0).abs() < 0.02, "rate {rate}: cv {}", var.sqrt() / mean);
            // Counts in unit windows are Poisson: P(0 arrivals in 1/λ) = e^−1.
            let p_long = gaps.iter().filter(|&&g| g > 1.0 / rate).count() as f64 / n as f64;
            assert!((p_long - (-1.0f64).exp()).abs() < 0.01, "rate {rate}: P(gap > 1/λ) = {p_long}");
        }
        assert!(PoissonArrivals::new(f64::INFINITY, 0).take(10).all(|g| g.is_zero()));
        // Seeded: the same schedule every time.
        let a: Vec<_> = PoissonArrivals::new(2.0, 9).take(5).collect();
        assert_eq!(a, PoissonArrivals::new(2.0, 9).take(5).collect::<Vec<_>>());
    }

    fn workload() -> Workload {
        let spec = WorkloadSpec { input_len: 4, output_len: 2, random_range: 0.0, token_ids: token_range(1000) };
        Workload::new(spec, 0).unwrap()
    }

    /// A fake server taking `work` per request; tracks the most requests ever in flight.
    fn fake(work: Duration) -> (impl Fn(RequestSpec) -> SendFuture + Send + Sync + 'static, Arc<AtomicUsize>) {
        let origin = Instant::now();
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let peak_out = Arc::clone(&peak);
        let send = move |req: RequestSpec| {
            let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
            Box::pin(async move {
                let send_s = origin.elapsed().as_secs_f64();
                peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(work).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let t = origin.elapsed().as_secs_f64();
                let input_tokens = req.prompt.input_tokens();
                RequestRecord {
                    input_tokens,
                    send_s,
                    token_times_s: vec![t],
                    output_tokens: 1,
                    end_s: t,
                    ..Default::default()
                }
            }) as SendFuture
        };
        (send, peak_out)
    }

    #[tokio::test]
    async fn a_closed_loop_keeps_exactly_n_in_flight_and_sends_the_count() {
        let (send, peak) = fake(Duration::from_millis(5));
        let records = drive(Load::Concurrency(3), Stop::Requests(20), workload(), 0, send).await;
        assert_eq!(records.len(), 20);
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert!(records.iter().all(|r| r.input_tokens == 4));
    }

    #[tokio::test]
    async fn an_open_loop_respects_max_concurrency() {
        let (send, peak) = fake(Duration::from_millis(5));
        let load = Load::Rate { rate: f64::INFINITY, max_concurrency: Some(2) };
        let records = drive(load, Stop::Requests(10), workload(), 0, send).await;
        assert_eq!(records.len(), 10);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_open_loop_spreads_arrivals_at_the_rate() {
        // 200/s for 30 requests: about 150 ms of arrivals (29 gaps of 5 ms on average).
        let (send, _) = fake(Duration::from_millis(1));
        let load = Load::Rate { rate: 200.0, max_concurrency: None };
        let records = drive(load, Stop::Requests(30), workload(), 5, send).await;
        let first = records.iter().map(|r| r.send_s).fold(f64::INFINITY, f64::min);
        let last = records.iter().map(|r| r.send_s).fold(0.0, f64::max);
        assert_eq!(records.len(), 30);
        assert!((0.05..1.0).contains(&(last - first)), "arrivals spanned {} s", last - first);
    }

    #[tokio::test]
    async fn an_open_loop_for_a_duration_sends_nothing_after_the_deadline() {
        // Arrivals far beyond what one slot serves: most wait, and those still waiting at the
        // deadline are dropped instead of being sent afterwards.
        let stop = Stop::Duration(Duration::from_millis(100));
        for rate in [2000.0, f64::INFINITY] {
            let (send, peak) = fake(Duration::from_millis(10));
            let started = Instant::now();
            let records = drive(Load::Rate { rate, max_concurrency: Some(1) }, stop, workload(), 1, send).await;
            assert!(started.elapsed() < Duration::from_millis(500), "rate {rate}: ran {:?}", started.elapsed());
            assert!((3..=12).contains(&records.len()), "rate {rate}: {} requests", records.len());
            assert_eq!(peak.load(Ordering::SeqCst), 1);
            let first = records.iter().map(|r| r.send_s).fold(f64::INFINITY, f64::min);
            assert!(records.iter().all(|r| r.send_s - first < 0.1 + 0.02), "rate {rate}");
        }
    }

    #[tokio::test]
    async fn a_duration_stops_new_requests_at_the_deadline() {
        let (send, _) = fake(Duration::from_millis(10));
        let stop = Stop::Duration(Duration::from_millis(100));
        let records = drive(Load::Concurrency(2), stop, workload(), 0, send).await;
        // About 2 × 10 requests; none sent after the deadline.
        assert!((4..=24).contains(&records.len()), "{} requests", records.len());
        let first = records.iter().map(|r| r.send_s).fold(f64::INFINITY, f64::min);
        assert!(records.iter().all(|r| r.send_s - first < 0.1 + 0.02));
    }
}
