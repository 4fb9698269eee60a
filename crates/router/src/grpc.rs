//! The `shardline.v1.Generation` gRPC service.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shardline_proto::v1 as pb;
use shardline_proto::v1::generation_server::{Generation, GenerationServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use crate::auth::ApiKeys;
use crate::convert;
use crate::engine_core::{CoreEvent, EngineHandle, Submitted, TokenEvent};
use crate::ServerInfo;

/// Messages buffered per stream before the engine's events wait on a slow client.
const STREAM_BUFFER: usize = 64;

pub struct GenerationService {
    handle: EngineHandle,
    info: Arc<ServerInfo>,
    next_id: AtomicU64,
}

/// The tonic server for `handle`, ready to add to a `Server` builder.
pub fn service(
    handle: EngineHandle,
    info: Arc<ServerInfo>,
    keys: ApiKeys,
) -> InterceptedService<GenerationServer<GenerationService>, RequireApiKey> {
    let svc = GenerationServer::new(GenerationService { handle, info, next_id: AtomicU64::new(0) });
    InterceptedService::new(svc, RequireApiKey(keys))
}

/// UNAUTHENTICATED unless the `authorization` metadata carries an accepted key.
#[derive(Clone)]
pub struct RequireApiKey(ApiKeys);

impl Interceptor for RequireApiKey {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
        match self.0.allows(authorization) {
            true => Ok(request),
            false => Err(Status::unauthenticated(crate::auth::REFUSED)),
        }
    }
}

impl GenerationService {
    fn request_id(&self, given: String) -> String {
        if given.is_empty() {
            format!("grpc-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
        } else {
            given
        }
    }

    async fn submit(&self, req: pb::GenerateRequest) -> Result<(String, Submitted), Status> {
        let id = self.request_id(req.request_id);
        let prompt = self.info.encode(&convert::prompt(req.input)?)?;
        let prompt_tokens = prompt.len();
        let params = convert::sampling(req.sampling)?;
        let submitted = self.handle.submit(prompt, params).await?;
        tracing::debug!(request_id = %id, engine_id = submitted.id, prompt_tokens, "admitted");
        Ok((id, submitted))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Generation for GenerationService {
    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        let (id, mut submitted) = self.submit(req.into_inner()).await?;
        // If the client goes away, this future is dropped with `submitted`: the request aborts.
        while let Some(event) = submitted.events.recv().await {
            match event {
                CoreEvent::Token(_) => {}
                CoreEvent::Finished(out) => return Ok(Response::new(convert::response(id, &out))),
                CoreEvent::Failed(why) => return Err(Status::internal(format!("generation failed: {why}"))),
            }
        }
        Err(Status::unavailable("the engine stopped"))
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(&self, req: Request<pb::GenerateRequest>) -> Result<Response<ChunkStream>, Status> {
        let (id, submitted) = self.submit(req.into_inner()).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(forward(id, submitted, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn health(&self, _: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        let s = &self.handle.stats;
        let serving = s.serving.load(Ordering::SeqCst);
        if !serving {
            return Err(Status::unavailable("the engine has stopped"));
        }
        if s.is_recovering() {
            return Err(Status::unavailable("recovering: the group is re-forming after losing a rank"));
        }
        Ok(Response::new(pb::HealthResponse {
            serving,
            num_running: s.running.load(Ordering::Relaxed) as u32,
            num_waiting: s.waiting.load(Ordering::Relaxed) as u32,
            kv_cache_usage: s.kv_usage(),
        }))
    }

    async fn model_info(&self, _: Request<pb::ModelInfoRequest>) -> Result<Response<pb::ModelInfoResponse>, Status> {
        let i = &self.info;
        Ok(Response::new(pb::ModelInfoResponse {
            model_id: i.model_id.clone(),
            vocab_size: i.limits.vocab_size as u32,
            max_model_len: i.limits.max_model_len as u32,
            eos_token_ids: i.eos_token_ids.clone(),
            tp: i.tp as u32,
            pp: i.pp as u32,
            block_size: i.limits.block_size as u32,
            num_kv_blocks: i.limits.num_kv_blocks as u32,
            dtype: i.dtype.clone(),
            scheduler: i.limits.policy.to_string(),
            prefix_caching: i.limits.prefix_caching,
        }))
    }
}

/// Relays one request's engine events to its gRPC stream. Returns (dropping `submitted`, which
/// aborts the request) as soon as the client hangs up, even while no token is due.
async fn forward(id: String, mut submitted: Submitted, tx: mpsc::Sender<Result<pb::GenerateStreamResponse, Status>>) {
    loop {
        let event = tokio::select! {
            _ = tx.closed() => return,
            event = submitted.events.recv() => event,
        };
        let (msg, last) = match event {
            Some(CoreEvent::Token(TokenEvent { token_id, text, logprobs, .. })) => (
                Ok(pb::GenerateStreamResponse {
                    request_id: id.clone(),
                    text,
                    token_ids: vec![token_id],
                    logprobs: logprobs.iter().map(convert::logprobs).collect(),
                    ..Default::default()
                }),
                false,
            ),
            Some(CoreEvent::Finished(out)) => (Ok(convert::final_chunk(id.clone(), &out)), true),
            Some(CoreEvent::Failed(why)) => (Err(Status::internal(format!("generation failed: {why}"))), true),
            None => (Err(Status::unavailable("the engine stopped")), true),
        };
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}
