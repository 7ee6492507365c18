//! Berlin Group NextGenPSD2 1.3 ASPSP simulator serving several sandbox banks at once.
//!
//! Every bank lives under its own path prefix (`/lt-alpha/v1/...`). Besides the Berlin Group
//! routes the sandbox serves an HTML redirect-SCA page per bank, test-control routes under
//! `/__admin`, an ECB-style daily FX feed and a health check. See `infra/SANDBOX.md`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let sandbox = infra::sandbox::spawn(infra::sandbox::SandboxConfig::default()).await?;
//! let alpha = sandbox.bank_url("lt-alpha"); // "http://127.0.0.1:PORT/lt-alpha"
//! # let _ = alpha; Ok(()) }
//! ```

mod admin;
mod ais;
pub mod banks;
mod bg;
mod data;
mod error;
mod pis;
mod sca;
mod state;
mod util;

#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post, put};

pub use banks::{BANKS, Bank};
pub use data::DEFAULT_PSU;
pub use pis::REJECTED_CREDITOR_IBAN;
pub use state::SandboxState;

/// Sandbox settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Time between payment status steps after SCA (ACTC → ACSP → ACSC). Default 2 s.
    pub payment_step: Duration,
    /// Maximum transactions per page. Default 50.
    pub page_size: usize,
    /// Seed of all generated data and of the fault RNG.
    pub seed: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            payment_step: Duration::from_secs(2),
            page_size: 50,
            seed: 42,
        }
    }
}

impl SandboxConfig {
    /// Reads SANDBOX_PAYMENT_STEP_MS, SANDBOX_PAGE_SIZE and SANDBOX_SEED; unset variables keep
    /// their defaults.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut c = Self::default();
        if let Some(v) = get("SANDBOX_PAYMENT_STEP_MS") {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("SANDBOX_PAYMENT_STEP_MS={v:?}: {e}"))?;
            c.payment_step = Duration::from_millis(ms);
        }
        if let Some(v) = get("SANDBOX_PAGE_SIZE") {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("SANDBOX_PAGE_SIZE={v:?}: {e}"))?;
            anyhow::ensure!(n >= 1, "SANDBOX_PAGE_SIZE must be at least 1");
            c.page_size = n;
        }
        if let Some(v) = get("SANDBOX_SEED") {
            c.seed = v
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("SANDBOX_SEED={v:?}: {e}"))?;
        }
        Ok(c)
    }
}

/// The sandbox HTTP application.
pub fn router(state: SandboxState) -> Router {
    Router::new()
        // Berlin Group: AIS
        .route("/{bank}/v1/consents", post(ais::create_consent))
        .route(
            "/{bank}/v1/consents/{consentId}",
            get(ais::get_consent).delete(ais::delete_consent),
        )
        .route(
            "/{bank}/v1/consents/{consentId}/status",
            get(ais::consent_status),
        )
        .route(
            "/{bank}/v1/consents/{consentId}/authorisations",
            get(ais::consent_authorisations),
        )
        .route(
            "/{bank}/v1/consents/{consentId}/authorisations/{authorisationId}",
            get(ais::consent_sca_status),
        )
        .route("/{bank}/v1/accounts", get(ais::accounts))
        .route(
            "/{bank}/v1/accounts/{account-id}",
            get(ais::account_details),
        )
        .route(
            "/{bank}/v1/accounts/{account-id}/balances",
            get(ais::balances),
        )
        .route(
            "/{bank}/v1/accounts/{account-id}/transactions",
            get(ais::transactions),
        )
        // Berlin Group: PIS
        .route("/{bank}/v1/payments/{payment-product}", post(pis::initiate))
        .route(
            "/{bank}/v1/payments/{payment-product}/{paymentId}",
            get(pis::get_payment),
        )
        .route(
            "/{bank}/v1/payments/{payment-product}/{paymentId}/status",
            get(pis::payment_status),
        )
        .route(
            "/{bank}/v1/payments/{payment-product}/{paymentId}/authorisations",
            get(pis::payment_authorisations),
        )
        .route(
            "/{bank}/v1/payments/{payment-product}/{paymentId}/authorisations/{authorisationId}",
            get(pis::payment_sca_status),
        )
        // Redirect SCA pages
        .route("/{bank}/sca/{kind}/{id}", get(sca::show).post(sca::submit))
        // Test control
        .route("/__admin/counts", get(admin::counts))
        .route("/__admin/pending-sca/{bank}", get(admin::pending_sca))
        .route(
            "/__admin/requests",
            get(admin::requests).delete(admin::clear_requests),
        )
        .route(
            "/__admin/faults",
            put(admin::put_faults)
                .get(admin::get_faults)
                .delete(admin::delete_faults),
        )
        .route(
            "/__admin/consents/{bank}/{id}/status",
            post(admin::set_consent_status),
        )
        .route("/__admin/sca/{bank}/{kind}/{id}", post(sca::admin_decide))
        .route("/__admin/reset", post(admin::reset))
        .route("/ecb/eurofxref-daily.xml", get(admin::ecb_daily))
        .route("/healthz", get(admin::healthz))
        .fallback(bg::fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bg::layer,
        ))
        .with_state(state)
}

/// A sandbox running in a background task.
#[derive(Debug, Clone)]
pub struct SandboxHandle {
    /// "http://127.0.0.1:PORT"
    pub base_url: String,
    pub state: SandboxState,
    server: std::sync::Arc<tokio::task::AbortHandle>,
}

impl SandboxHandle {
    /// Base URL of one bank, e.g. "http://127.0.0.1:PORT/lt-alpha".
    pub fn bank_url(&self, bank: &str) -> String {
        format!("{}/{bank}", self.base_url)
    }

    /// Stops the server task (it also stops when the runtime shuts down).
    pub fn shutdown(&self) {
        self.server.abort();
    }
}

/// Binds 127.0.0.1:0 and serves the sandbox in a background tokio task.
pub async fn spawn(config: SandboxConfig) -> anyhow::Result<SandboxHandle> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let state = SandboxState::new(config);
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "sandbox server stopped");
        }
    });
    Ok(SandboxHandle {
        base_url: format!("http://{addr}"),
        state,
        server: std::sync::Arc::new(task.abort_handle()),
    })
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn config_from_env_lookup() {
        let c = SandboxConfig::from_lookup(|k| match k {
            "SANDBOX_PAYMENT_STEP_MS" => Some("50".into()),
            "SANDBOX_PAGE_SIZE" => Some("10".into()),
            "SANDBOX_SEED" => Some("7".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.payment_step, Duration::from_millis(50));
        assert_eq!(c.page_size, 10);
        assert_eq!(c.seed, 7);
        assert_eq!(
            SandboxConfig::from_lookup(|_| None).unwrap(),
            SandboxConfig::default()
        );
        assert!(SandboxConfig::from_lookup(|_| Some("x".into())).is_err());
    }
}
