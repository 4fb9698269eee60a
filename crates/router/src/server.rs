//! Runs the API servers next to the engine core until a signal, or until the core stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::ApiKeys;
use crate::engine_core::EngineCore;
use crate::{grpc, http, ServerInfo};

/// How long the listeners get to close their connections once the core has stopped.
const LISTENER_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// gRPC listen address (`shardline.v1.Generation`).
    pub grpc_addr: SocketAddr,
    /// OpenAI-compatible HTTP listen address; `None` disables HTTP.
    pub http_addr: Option<SocketAddr>,
    /// Threads of the async runtime (the model's kernels run on their own pool).
    pub io_threads: usize,
    /// Keys the API requires (none: open).
    pub api_keys: ApiKeys,
}

/// Why serving ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the engine failed: {0}")]
    Engine(#[from] shardline_engine::EngineError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until SIGINT/SIGTERM (clean shutdown, `Ok`) or until the engine core fails (`Err`:
/// every in-flight request has been told, the caller tears the group down). Prints
/// `READY grpc=ADDR http=ADDR` on stdout once both listeners are bound.
pub fn serve(core: EngineCore, info: Arc<ServerInfo>, cfg: ServeConfig) -> Result<(), ServeError> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.io_threads.max(1)).enable_all().build()?;
    let handle = core.handle.clone();
    let served = runtime.block_on(async {
        let grpc_listener = TcpListener::bind(cfg.grpc_addr)
            .await
            .map_err(|source| ServeError::Bind { addr: cfg.grpc_addr, source })?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_listener = match cfg.http_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?),
            None => None,
        };
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let grpc_task = {
            let mut stop = stop_rx.clone();
            let svc = grpc::service(handle.clone(), Arc::clone(&info), cfg.api_keys.clone());
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            })
        };
        let http_task = http_listener.map(|listener| {
            let mut stop = stop_rx.clone();
            let app = http::router(handle.clone(), Arc::clone(&info), cfg.api_keys.clone());
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            })
        });
        println!("READY grpc={grpc_addr} http={}", http_addr.map_or("off".to_string(), |a| a.to_string()));
        tracing::info!(%grpc_addr, ?http_addr, "serving");
        wait_for_stop(&core).await;
        // Requests in flight get an error from the core's shutdown; then the listeners close.
        // Clients may keep idle connections open: the graceful close gets a short, shared
        // deadline, so the whole shutdown stays well inside a launcher's SIGTERM grace period.
        handle.shutdown();
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + LISTENER_GRACE;
        let _ = tokio::time::timeout_at(deadline, grpc_task).await;
        if let Some(t) = http_task {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        Ok::<(), ServeError>(())
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    handle.shutdown();
    let core_result = core.join();
    served?;
    Ok(core_result?)
}

/// Returns on SIGINT, SIGTERM or when the engine core has stopped by itself.
async fn wait_for_stop(core: &EngineCore) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { eprintln!("router: SIGINT, shutting down"); return }
            _ = term.recv() => { eprintln!("router: SIGTERM, shutting down"); return }
            _ = tick.tick() => if core.is_finished() { return },
        }
    }
}
