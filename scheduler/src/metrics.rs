//! What the scheduler counts, for operators and tests:
//! `rik_scheduler_api_calls_total{method}`, the `rik.v1.Rik` calls served,
//! per method (a test proves with it that `rik apply --wait` is woken by
//! a watch, not by polling).
//!
//! `rik-scheduler --metrics-listen ADDR` serves them at `GET /metrics`
//! ([`serve`]); `riklet --standalone` registers them on its own `/metrics`
//! ([`ApiCalls::register`]).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The `rik.v1.Rik` methods, as the `method` label names them.
pub const METHODS: [&str; 7] = [
    "Apply",
    "ListApps",
    "GetApp",
    "DeleteApp",
    "ListNodes",
    "Logs",
    "Watch",
];

/// Content type of the OpenMetrics text that [`serve`] answers.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = [(&'static str, &'static str); 1];

/// Calls served per `rik.v1.Rik` method. Clones count into the same
/// counters.
#[derive(Debug, Clone)]
pub struct ApiCalls(Family<Labels, Counter>);

impl Default for ApiCalls {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiCalls {
    /// Every method at 0, so that each series exists before its first call.
    pub fn new() -> Self {
        let family = Family::default();
        for method in METHODS {
            let _ = family.get_or_create(&[("method", method)]);
        }
        Self(family)
    }

    /// One more call of `method` (one of [`METHODS`]).
    pub fn count(&self, method: &'static str) {
        self.0.get_or_create(&[("method", method)]).inc();
    }

    /// Calls of `method` so far.
    pub fn get(&self, method: &'static str) -> u64 {
        self.0.get_or_create(&[("method", method)]).get()
    }

    /// Adds `rik_scheduler_api_calls_total` to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rik_scheduler_api_calls",
            "rik.v1.Rik calls served by the scheduler, per method",
            self.0.clone(),
        );
    }
}

/// Serves `registry` as `GET /metrics` (OpenMetrics text) on `listener`
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(registry));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(std::fmt::Error) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_method_with_every_series_present() {
        let calls = ApiCalls::new();
        calls.count("Apply");
        calls.clone().count("Apply");
        calls.count("Watch");
        assert_eq!(
            (calls.get("Apply"), calls.get("Watch"), calls.get("GetApp")),
            (2, 1, 0)
        );
        let mut registry = Registry::default();
        calls.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE rik_scheduler_api_calls counter"),
            "{text}"
        );
        assert!(
            text.contains("rik_scheduler_api_calls_total{method=\"Apply\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rik_scheduler_api_calls_total{method=\"GetApp\"} 0"),
            "{text}"
        );
    }
}
