//! What measured throughput costs: `shardline cost` turns a bench or experiment report plus GPU
//! and API prices into dollars per million tokens. Pure arithmetic, tested on hand-worked
//! numbers; the CLI only reads files and prints.
//!
//! Inputs per run: input and output throughput `in`, `out` (tokens/s, measured while the server
//! was busy); prices: `N` GPUs at `P` $/GPU-hour, utilization `U` in (0, 1] (the fraction of
//! hours the server is busy at that throughput), optionally API prices `A` and `B` ($ per 1M
//! input and output tokens).
//!
//! | quantity | formula |
//! |---|---|
//! | hourly cost | C = N · P |
//! | $ per 1M output tokens (all cost on output) | C / (out · 3600 · U) · 1e6 |
//! | $ per 1M tokens (input + output) | C / ((in + out) · 3600 · U) · 1e6 |
//! | API cost of one busy hour's tokens | C_api = (in · A + out · B) · 3600 / 1e6 |
//! | break-even utilization | U* = C / C_api (self-hosting is cheaper above U*; never if U* > 1) |
//! | self-host $ per 1M input / output, split at the API's A : B | k · A and k · B, k = C / (C_api · U) = U* / U |
//!
//! The split answers "what would my price list be if I charged like the API": k scales the API's
//! prices so that a busy hour's tokens cost exactly C/U, what the hour of hardware costs per
//! busy hour.
//!
//! The formulas are here; the `report` submodule reads the runs out of report JSON and renders the table.

mod report;

use anyhow::ensure;

pub use report::{markdown, measured_runs};

/// An API's list prices, in $ per 1M tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApiPrices {
    pub input_usd_per_m: f64,
    pub output_usd_per_m: f64,
}

/// What the hardware costs and how busy it is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub gpu_hour_usd: f64,
    pub gpus: f64,
    /// Fraction of hours busy at the measured throughput, in (0, 1].
    pub utilization: f64,
    pub api: Option<ApiPrices>,
}

impl Prices {
    /// Refuses prices that would make the arithmetic meaningless, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = |v: f64, what: &str| -> anyhow::Result<()> {
            ensure!(v.is_finite() && v > 0.0, "{what} must be a positive number, not {v}");
            Ok(())
        };
        positive(self.gpu_hour_usd, "--gpu-hour-usd")?;
        positive(self.gpus, "--gpus")?;
        ensure!(
            self.utilization.is_finite() && self.utilization > 0.0 && self.utilization <= 1.0,
            "--utilization must be in (0, 1], not {}",
            self.utilization
        );
        if let Some(api) = self.api {
            positive(api.input_usd_per_m, "--api-input-usd-per-m")?;
            positive(api.output_usd_per_m, "--api-output-usd-per-m")?;
        }
        Ok(())
    }

    /// C = N · P, $ per hour.
    pub fn hourly_usd(&self) -> f64 {
        self.gpus * self.gpu_hour_usd
    }
}

/// One measured run: which layout and load, and its busy throughput.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredRun {
    /// Layout name (experiment reports) or empty (bench reports).
    pub layout: String,
    /// `c=8`, `rate=2/s`, ….
    pub load: String,
    pub input_tok_s: f64,
    pub output_tok_s: f64,
    /// The layout's TP × PP ranks (experiment reports; bench reports do not know the server's).
    pub ranks: Option<usize>,
}

/// Self-hosting against an API for one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApiComparison {
    /// C_api: what the API charges for one busy hour's tokens.
    pub api_usd_per_busy_hour: f64,
    /// U* = C / C_api.
    pub break_even_utilization: f64,
    /// k · A and k · B.
    pub input_usd_per_m: f64,
    pub output_usd_per_m: f64,
}

/// One run's costs; `None` where the run produced no tokens to divide by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunCost {
    pub hourly_usd: f64,
    pub output_usd_per_m: Option<f64>,
    pub total_usd_per_m: Option<f64>,
    pub api: Option<ApiComparison>,
}

/// The formulas of the module header, for one run.
pub fn run_cost(run: &MeasuredRun, prices: &Prices) -> RunCost {
    let c = prices.hourly_usd();
    let per_m = |tok_s: f64| (tok_s > 0.0).then(|| c / (tok_s * 3600.0 * prices.utilization) * 1e6);
    let api = prices.api.and_then(|api| {
        let api_hour = (run.input_tok_s * api.input_usd_per_m + run.output_tok_s * api.output_usd_per_m) * 3600.0 / 1e6;
        (api_hour > 0.0).then(|| {
            let k = c / (api_hour * prices.utilization);
            ApiComparison {
                api_usd_per_busy_hour: api_hour,
                break_even_utilization: c / api_hour,
                input_usd_per_m: k * api.input_usd_per_m,
                output_usd_per_m: k * api.output_usd_per_m,
            }
        })
    });
    RunCost {
        hourly_usd: c,
        output_usd_per_m: per_m(run.output_tok_s),
        total_usd_per_m: per_m(run.input_tok_s + run.output_tok_s),
        api,
    }
}

/// `0.4167`, or `never (U* = 1.39)` when even a fully busy server costs more than the API.
pub fn break_even_label(u: f64) -> String {
    if u > 1.0 {
        format!("never (U* = {u:.2})")
    } else {
        format!("{u:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "got {got}, want {want}");
    }

    fn prices(gpus: f64, gpu_hour_usd: f64, utilization: f64, api: Option<(f64, f64)>) -> Prices {
        let api = api.map(|(a, b)| ApiPrices { input_usd_per_m: a, output_usd_per_m: b });
        Prices { gpu_hour_usd, gpus, utilization, api }
    }

    fn run(input_tok_s: f64, output_tok_s: f64) -> MeasuredRun {
        MeasuredRun { layout: String::new(), load: "c=1".into(), input_tok_s, output_tok_s, ranks: None }
    }

    #[test]
    fn one_gpu_at_two_dollars_and_100_tokens_per_second() {
        // 100 tok/s × 3600 = 360 000 tokens per hour for $2: 2 / 0.36 = $5.5556 per 1M.
        let c = run_cost(&run(0.0, 100.0), &prices(1.0, 2.0, 1.0, None));
        close(c.hourly_usd, 2.0);
        close(c.output_usd_per_m.unwrap(), 2.0 / 0.36);
        assert!((c.output_usd_per_m.unwrap() - 5.5556).abs() < 1e-4);
        close(c.total_usd_per_m.unwrap(), 2.0 / 0.36);
        assert_eq!(c.api, None);
    }

    #[test]
    fn utilization_and_input_tokens_spread_the_cost() {
        // 4 GPUs × $2.5 = $10/h; at half utilization 200 out tok/s is 360 000 tokens per hour:
        // $27.78 per 1M output; with 300 input tok/s, 900 000 tokens per hour: $11.11 per 1M.
        let c = run_cost(&run(300.0, 200.0), &prices(4.0, 2.5, 0.5, None));
        close(c.hourly_usd, 10.0);
        close(c.output_usd_per_m.unwrap(), 10.0 / 0.36);
        close(c.total_usd_per_m.unwrap(), 10.0 / 0.9);
    }

    #[test]
    fn break_even_below_one_and_the_api_split() {
        // 1 GPU at $2/h; 1000 in + 1000 out tok/s; API $0.15 / $0.60 per 1M: a busy hour's
        // tokens cost the API (1000·0.15 + 1000·0.60)·3600/1e6 = $2.70, so U* = 2/2.7 = 0.7407.
        let c = run_cost(&run(1000.0, 1000.0), &prices(1.0, 2.0, 1.0, Some((0.15, 0.60)))).api.unwrap();
        close(c.api_usd_per_busy_hour, 2.7);
        close(c.break_even_utilization, 2.0 / 2.7);
        // k = U*/U = 0.7407: $0.1111 / $0.4444 per 1M, which prices the hour's 3.6M + 3.6M
        // tokens at exactly $2.
        close(c.input_usd_per_m, 0.15 * 2.0 / 2.7);
        close(c.output_usd_per_m, 0.60 * 2.0 / 2.7);
        close(3.6 * c.input_usd_per_m + 3.6 * c.output_usd_per_m, 2.0);
        // At half utilization k doubles: each busy hour must also pay for an idle one.
        let half = run_cost(&run(1000.0, 1000.0), &prices(1.0, 2.0, 0.5, Some((0.15, 0.60)))).api.unwrap();
        close(half.output_usd_per_m, 2.0 * c.output_usd_per_m);
        close(half.break_even_utilization, c.break_even_utilization);
    }

    #[test]
    fn break_even_above_one_never_pays() {
        // 100 out tok/s only: the API charges 100·0.6·3600/1e6 = $0.216 per busy hour; $2 of
        // GPU is U* = 9.26, never cheaper.
        let c = run_cost(&run(0.0, 100.0), &prices(1.0, 2.0, 1.0, Some((0.15, 0.60)))).api.unwrap();
        close(c.api_usd_per_busy_hour, 0.216);
        close(c.break_even_utilization, 2.0 / 0.216);
        assert_eq!(break_even_label(c.break_even_utilization), "never (U* = 9.26)");
        assert_eq!(break_even_label(0.5), "0.5000");
    }

    #[test]
    fn a_run_without_tokens_has_no_per_token_cost() {
        let c = run_cost(&run(0.0, 0.0), &prices(1.0, 2.0, 1.0, Some((0.15, 0.60))));
        assert_eq!((c.output_usd_per_m, c.total_usd_per_m, c.api), (None, None, None));
        assert!(markdown(&[(run(0.0, 0.0), prices(1.0, 2.0, 1.0, Some((0.15, 0.6))))]).contains("| - | - |"));
    }

    #[test]
    fn bad_prices_are_refused_with_the_flag_named() {
        let err = |p: Prices| p.validate().unwrap_err().to_string();
        assert!(prices(1.0, 2.0, 1.0, Some((0.1, 0.2))).validate().is_ok());
        assert!(err(prices(1.0, 0.0, 1.0, None)).contains("--gpu-hour-usd"));
        assert!(err(prices(1.0, f64::NAN, 1.0, None)).contains("--gpu-hour-usd"));
        assert!(err(prices(-1.0, 2.0, 1.0, None)).contains("--gpus"));
        assert!(err(prices(1.0, 2.0, 0.0, None)).contains("--utilization"));
        assert!(err(prices(1.0, 2.0, 1.5, None)).contains("--utilization"));
        assert!(err(prices(1.0, 2.0, 1.0, Some((f64::INFINITY, 0.2)))).contains("--api-input-usd-per-m"));
        assert!(err(prices(1.0, 2.0, 1.0, Some((0.1, -0.2)))).contains("--api-output-usd-per-m"));
    }
}
