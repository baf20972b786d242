//! The admin listener: `/metrics` in the Prometheus text format and `/healthz` for load
//! balancers and service managers. Plain HTTP/1.1 on hyper, read-only, no request bodies.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What `/healthz` checks: the recordings' filesystem still has `min_free_bytes` free, so
/// new sessions would be accepted.
#[derive(Clone)]
pub struct Health {
    pub recordings: PathBuf,
    pub min_free_bytes: u64,
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Health, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = answer(request.method(), request.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), connection).await;
        });
    }
}

fn answer(method: &hyper::Method, path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        response
    };
    if method != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match path {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => match crate::recording::disk::shortage(&health.recordings, health.min_free_bytes) {
            None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Some(problem) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("unhealthy: {problem}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /healthz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_below_the_free_space_minimum_and_metrics_render() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::default();
        let get = |path: &str, min_free_bytes: u64| {
            let health = Health { recordings: dir.path().to_path_buf(), min_free_bytes };
            answer(&hyper::Method::GET, path, &metrics, &health)
        };
        assert_eq!(get("/healthz", 1).status(), StatusCode::OK);
        assert_eq!(get("/healthz", u64::MAX).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/metrics", 1).status(), StatusCode::OK);
        assert_eq!(get("/nope", 1).status(), StatusCode::NOT_FOUND);
        let health = Health { recordings: dir.path().to_path_buf(), min_free_bytes: 1 };
        assert_eq!(answer(&hyper::Method::POST, "/metrics", &metrics, &health).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
