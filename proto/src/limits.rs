//! The limits every gRPC server and client of the workspace sets, so that
//! one peer (a broken riklet, a hostile client, a half-open connection)
//! cannot exhaust memory, tasks or streams. docs/protocol.md lists them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

/// Largest request a server decodes and largest answer a peer decodes: a
/// manifest is at most [`crate::manifest::MAX_MANIFEST_BYTES`], a log chunk
/// 256 KiB, a status a few KiB.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest `rik.v1` answer: an app of 1,000 replicas, each with its
/// riklet's full status JSON, is more than [`MAX_MESSAGE`].
pub const MAX_API_ANSWER: usize = 64 << 20;
/// Deadline of a unary call, and of opening a stream (not of the stream).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings notice a peer that vanished without closing.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Calls in flight on one connection, streams included: a riklet holds 2,
/// a `rik` command a few.
pub const MAX_CALLS_PER_CONNECTION: usize = 64;
/// HTTP/2 streams one connection may open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// Client-streaming methods: their answer comes when the client's stream
/// ends, so [`REQUEST_TIMEOUT`] does not apply to them.
const CLIENT_STREAMS: &[&str] = &["/worker.Worker/SendStatusUpdates"];

/// A server builder with the limits above (keep-alive, calls and streams
/// per connection, [`REQUEST_TIMEOUT`] on unary calls). The message size
/// limits are per service: see [`MAX_MESSAGE`].
pub fn server() -> Server<Stack<UnaryTimeoutLayer, Identity>> {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(UnaryTimeoutLayer(REQUEST_TIMEOUT))
}

/// Answers `DEADLINE_EXCEEDED` to a call not answered within its duration,
/// except the client-streaming ones. tonic's own `Server::timeout` would
/// also end a riklet's status stream after the duration.
#[derive(Debug, Clone, Copy)]
pub struct UnaryTimeoutLayer(Duration);

impl<S> tower::Layer<S> for UnaryTimeoutLayer {
    type Service = UnaryTimeout<S>;

    fn layer(&self, inner: S) -> UnaryTimeout<S> {
        UnaryTimeout {
            inner,
            timeout: self.0,
        }
    }
}

/// The service of [`UnaryTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct UnaryTimeout<S> {
    inner: S,
    timeout: Duration,
}

type Answer<E> = Result<http::Response<tonic::body::Body>, E>;

impl<S, B> tower::Service<http::Request<B>> for UnaryTimeout<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Answer<S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limited = !CLIENT_STREAMS.contains(&request.uri().path());
        let timeout = self.timeout;
        let answer = self.inner.call(request);
        Box::pin(async move {
            if !limited {
                return answer.await;
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "request not answered within {}s",
                    timeout.as_secs()
                ))
                .into_http()),
            }
        })
    }
}
