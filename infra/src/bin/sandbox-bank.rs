//! The sandbox bank as a standalone server.
//!
//! Environment: SANDBOX_ADDR (default 127.0.0.1:8080), SANDBOX_PAYMENT_STEP_MS,
//! SANDBOX_PAGE_SIZE, SANDBOX_SEED, SANDBOX_PUBLIC_URL (base URL put into SCA links; default
//! taken from the Host header of each request), RUST_LOG (default "info").

use anyhow::Context;
use infra::sandbox::{SandboxConfig, SandboxState, router};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let config = SandboxConfig::from_env()?;
    let addr = std::env::var("SANDBOX_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let state = match std::env::var("SANDBOX_PUBLIC_URL") {
        Ok(url) if !url.trim().is_empty() => {
            SandboxState::with_public_base_url(config.clone(), url)
        }
        _ => SandboxState::new(config.clone()),
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        payment_step_ms = config.payment_step.as_millis() as u64,
        page_size = config.page_size,
        seed = config.seed,
        "sandbox bank listening"
    );
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM (container stop).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
