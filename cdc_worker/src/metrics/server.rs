//! The metrics endpoint (`--metrics-addr`): HTTP/1.1, GET and HEAD only.
//!
//! - `/metrics`: every metric in the text exposition format 0.0.4;
//! - `/healthz`: 200 while the process runs;
//! - `/readyz`: 200 once the worker has connected to the database and
//!   started its loops, 503 before, while a part restarts, and once it
//!   stops, with a short reason in the body.
//!
//! Nothing else is served; no request changes anything.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (more wait in the listen backlog).
const MAX_CONNECTIONS: usize = 64;

/// Listens on `addr` (`HOST:PORT`; a host name is resolved, its first
/// address used).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "the metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(handle));
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(answer(req.method(), req.uri().path()))
}

/// The answer to `method` `path`.
fn answer(method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n".into());
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let r = match path {
        "/metrics" => response(StatusCode::OK, super::CONTENT_TYPE, super::render()),
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            let (ready, reason) = super::health::readiness();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            response(status, TEXT, reason)
        }
        _ => response(StatusCode::NOT_FOUND, TEXT, "not found: /metrics, /healthz, /readyz\n".into()),
    };
    if method == Method::HEAD {
        let (parts, _) = r.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::health;

    async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn the_endpoints_answer_and_readiness_follows_the_parts() {
        health::reset();
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener));

        let (status, head, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
        assert!(body.contains("# TYPE syncbridge_exports_total counter\n"), "{body}");
        assert!(body.contains(&format!("syncbridge_build_info{{version=\"{}\"}} 1\n", crate::VERSION)), "{body}");
        let (status, head, body) = get(addr, "HEAD", "/metrics").await;
        assert_eq!((status, body.as_str()), (200, ""), "{head}");
        assert_eq!(get(addr, "GET", "/healthz").await.0, 200);
        assert_eq!(get(addr, "GET", "/nope").await.0, 404);
        let (status, head, _) = get(addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get, head"), "{head}");

        // Readiness: starting, ready, one part restarting, done, stopping.
        let (status, _, body) = get(addr, "GET", "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
        health::starting("ingest");
        health::starting("export");
        assert_eq!(get(addr, "GET", "/readyz").await.0, 503);
        health::ready("ingest");
        let (status, _, body) = get(addr, "GET", "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("export: starting"), "{body}");
        health::ready("export");
        assert_eq!(get(addr, "GET", "/readyz").await.0, 200);
        health::restarting("export");
        let (status, _, body) = get(addr, "GET", "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("export: restarting"), "{body}");
        health::done("export");
        assert_eq!(get(addr, "GET", "/readyz").await.0, 200);
        health::done("ingest");
        assert_eq!(get(addr, "GET", "/readyz").await.0, 503, "everything ended");
        health::ready("ingest");
        health::stopping();
        let (status, _, body) = get(addr, "GET", "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready: the worker is stopping\n"));
        assert_eq!(get(addr, "GET", "/healthz").await.0, 200);
        server.abort();
        health::reset();
    }
}
