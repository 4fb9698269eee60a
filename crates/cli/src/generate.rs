//! `shardline generate`: a gRPC client of `shardline serve`, with `run`'s flags and JSON.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use shardline_bench::backend::grpc::{bearer, with_key};
use shardline_proto::v1 as pb;
use shardline_proto::v1::generation_client::GenerationClient;
use shardline_structured::Constraint;
use tonic::transport::Channel;

use crate::args::SamplingArgs;
use crate::run::OutputFormat;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Server address.
    #[arg(long, env = "SHARDLINE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Prompt text.
    #[arg(long, env = "SHARDLINE_PROMPT")]
    prompt: Option<String>,
    /// Prompt as token ids, e.g. `1,2,3`.
    #[arg(long, env = "SHARDLINE_PROMPT_TOKEN_IDS", value_delimiter = ',', conflicts_with = "prompt")]
    prompt_token_ids: Vec<u32>,
    /// Send the prompt as a user message through the model's chat template.
    #[arg(long, env = "SHARDLINE_CHAT")]
    chat: bool,
    /// System message to put before the user message (with --chat).
    #[arg(long, env = "SHARDLINE_SYSTEM")]
    system: Option<String>,
    /// Print tokens as they arrive (server streaming).
    #[arg(long, env = "SHARDLINE_STREAM")]
    stream: bool,
    /// Output format.
    #[arg(long, env = "SHARDLINE_OUTPUT", value_enum, default_value = "text")]
    output: OutputFormat,
    /// Id to tag the request with (the server picks one otherwise).
    #[arg(long, env = "SHARDLINE_REQUEST_ID", default_value = "")]
    request_id: String,
    /// Wait up to this many seconds for the server to come up (connect and health).
    #[arg(long, env = "SHARDLINE_WAIT", default_value_t = 0)]
    wait: u64,
    /// The server's API key, sent as `authorization: Bearer KEY` metadata (of a
    /// comma-separated list in the environment, as `serve` takes it, the first).
    #[arg(long, env = "SHARDLINE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

fn request(args: &GenerateArgs) -> anyhow::Result<pb::GenerateRequest> {
    use pb::generate_request::Input;
    let input = if !args.prompt_token_ids.is_empty() {
        Input::TokenIds(pb::TokenIds { ids: args.prompt_token_ids.clone() })
    } else {
        let Some(text) = args.prompt.clone() else { bail!("give --prompt or --prompt-token-ids") };
        if args.chat {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(pb::ChatMessage { role: "system".into(), content: s.clone() });
            }
            messages.push(pb::ChatMessage { role: "user".into(), content: text });
            Input::Chat(pb::ChatMessages { messages })
        } else if args.system.is_some() {
            bail!("--system needs --chat");
        } else {
            Input::Text(text)
        }
    };
    let p = args.sampling.params();
    Ok(pb::GenerateRequest {
        request_id: args.request_id.clone(),
        input: Some(input),
        sampling: Some(pb::SamplingParameters {
            temperature: Some(p.temperature),
            top_p: Some(p.top_p),
            top_k: Some(p.top_k as u32),
            min_p: Some(p.min_p),
            repetition_penalty: Some(p.repetition_penalty),
            seed: p.seed,
            max_tokens: Some(p.max_tokens as u32),
            stop: p.stop,
            stop_token_ids: p.stop_token_ids,
            ignore_eos: p.ignore_eos,
            logprobs: p.logprobs.map(|k| k as u32),
            presence_penalty: Some(p.presence_penalty),
            frequency_penalty: Some(p.frequency_penalty),
            logit_bias: p.logit_bias.into_iter().collect(),
            constraint: p.constraint.map(|c| match c {
                Constraint::JsonObject => pb::sampling_parameters::Constraint::JsonObject(true),
                Constraint::JsonSchema(s) => pb::sampling_parameters::Constraint::JsonSchema(s.to_string()),
                Constraint::Regex(r) => pb::sampling_parameters::Constraint::Regex(r),
                Constraint::Choice(options) => pb::sampling_parameters::Constraint::Choice(pb::Choice { options }),
                Constraint::Grammar(g) => pb::sampling_parameters::Constraint::Grammar(g),
            }),
        }),
    })
}

/// The `authorization` metadata of `--api-key`, if given.
type Key = Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>;

/// Connects, retrying until `wait` seconds have passed and the server reports healthy.
async fn connect(addr: &str, wait: Duration, key: &Key) -> anyhow::Result<GenerationClient<Channel>> {
    let deadline = Instant::now() + wait;
    loop {
        let attempt = async {
            let mut c = GenerationClient::connect(addr.to_string()).await?;
            c.health(with_key(pb::HealthRequest {}, key)).await?;
            anyhow::Ok(c)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(e).with_context(|| format!("connecting to {addr}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What one call gathered: the final response plus client-side token arrival times.
struct Outcome {
    response: pb::GenerateResponse,
    sent: Instant,
    arrivals: Vec<Instant>,
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let req = request(&args)?;
    let first_key = args.api_key.as_deref().map(|k| k.split(',').next().unwrap_or_default().trim());
    let key = first_key.map(bearer).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(async {
        let mut client = connect(&args.addr, Duration::from_secs(args.wait), &key).await?;
        if args.stream {
            stream(&mut client, with_key(req, &key), matches!(args.output, OutputFormat::Text)).await
        } else {
            let sent = Instant::now();
            let response = client.generate(with_key(req, &key)).await.map_err(status_error)?.into_inner();
            Ok(Outcome { response, sent, arrivals: vec![Instant::now()] })
        }
    })?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&to_json(&outcome.response))?),
        OutputFormat::Text => {
            if !args.stream {
                print!("{}", outcome.response.text);
            }
            println!();
            print_summary(&outcome);
        }
    }
    Ok(())
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("server answered {:?}: {}", s.code(), s.message())
}

async fn stream(
    client: &mut GenerationClient<Channel>,
    req: tonic::Request<pb::GenerateRequest>,
    echo: bool,
) -> anyhow::Result<Outcome> {
    let sent = Instant::now();
    let mut chunks = client.generate_stream(req).await.map_err(status_error)?.into_inner();
    let mut response = pb::GenerateResponse::default();
    let mut arrivals = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = chunks.message().await.map_err(status_error)? {
        if !chunk.token_ids.is_empty() {
            arrivals.push(Instant::now());
        }
        if echo {
            write!(stdout, "{}", chunk.text)?;
            stdout.flush()?;
        }
        response.request_id = chunk.request_id;
        response.text.push_str(&chunk.text);
        response.token_ids.extend(chunk.token_ids);
        response.logprobs.extend(chunk.logprobs);
        if chunk.finish_reason != 0 {
            response.finish_reason = chunk.finish_reason;
            response.usage = chunk.usage;
            response.timings = chunk.timings;
        }
    }
    if response.finish_reason == 0 {
        bail!("the stream ended without a finish reason");
    }
    Ok(Outcome { response, sent, arrivals })
}

fn finish_name(f: i32) -> &'static str {
    match pb::FinishReason::try_from(f) {
        Ok(pb::FinishReason::Stop) => "stop",
        Ok(pb::FinishReason::Length) => "length",
        _ => "unknown",
    }
}

/// `run --output json`'s schema (prompt ids only when the server sent them: unary calls).
fn to_json(r: &pb::GenerateResponse) -> serde_json::Value {
    let t = r.timings.unwrap_or_default();
    let u = r.usage.unwrap_or_default();
    let n = r.token_ids.len();
    let logprobs = (!r.logprobs.is_empty()).then(|| {
        r.logprobs
            .iter()
            .map(|l| json!({"token_id": l.token_id, "logprob": l.logprob, "top": l.top.iter().map(|t| json!({"token_id": t.token_id, "logprob": t.logprob})).collect::<Vec<_>>()}))
            .collect::<Vec<_>>()
    });
    json!({
        "request_id": r.request_id,
        "text": r.text,
        "prompt_token_ids": r.prompt_token_ids,
        "token_ids": r.token_ids,
        "finish_reason": finish_name(r.finish_reason),
        "logprobs": logprobs,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens},
        "metrics": {
            "ttft_ms": t.ttft_ms,
            "prefill_tokens_per_s": if t.ttft_ms > 0.0 { u.prompt_tokens as f64 / (t.ttft_ms / 1e3) } else { 0.0 },
            "decode_tokens_per_s": if n > 1 && t.decode_ms > 0.0 { (n - 1) as f64 / (t.decode_ms / 1e3) } else { 0.0 },
            "queue_ms": t.queue_ms, "prefill_ms": t.prefill_ms, "decode_ms": t.decode_ms, "e2e_ms": t.e2e_ms,
        },
    })
}

fn print_summary(o: &Outcome) {
    let r = &o.response;
    let t = r.timings.unwrap_or_default();
    let u = r.usage.unwrap_or_default();
    println!(
        "-- finish: {} | prompt {} tokens | generated {} tokens",
        finish_name(r.finish_reason),
        u.prompt_tokens,
        u.completion_tokens
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if o.arrivals.len() > 1 {
        let ttft = ms(o.arrivals[0] - o.sent);
        let itl = ms(*o.arrivals.last().expect("non-empty") - o.arrivals[0]) / (o.arrivals.len() - 1) as f64;
        println!("-- client: TTFT {ttft:.1} ms | ITL {itl:.1} ms | {:.1} tok/s", 1e3 / itl);
    } else if let Some(done) = o.arrivals.first() {
        println!("-- client: end-to-end {:.1} ms", ms(*done - o.sent));
    }
    let itl = if u.completion_tokens > 1 { t.decode_ms / (u.completion_tokens - 1) as f64 } else { 0.0 };
    println!(
        "-- server: TTFT {:.1} ms (queue {:.1} + prefill {:.1}) | ITL {:.1} ms | e2e {:.1} ms",
        t.ttft_ms, t.queue_ms, t.prefill_ms, itl, t.e2e_ms
    );
}
