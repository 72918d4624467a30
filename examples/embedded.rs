//! redis-probe inside an application's own hyper server, for teams that cannot add a sidecar:
//! the library's health loop runs in the app's runtime and the app serves `/readyz`, `/livez`
//! and `/metrics` from the same published state, next to its own routes.
//!
//! ```text
//! REDIS_ADDRESS=127.0.0.1:7001 REDIS_TLS_ENABLED=true REDIS_TLS_CA_FILE=ca.pem \
//!   REDIS_PASSWORD=... cargo run --example embedded
//! curl localhost:8000/            # the app
//! curl localhost:8000/readyz      # redis-probe's readiness
//! ```
//!
//! Configuration is the sidecar's (same variables); `PROBE_LISTEN` is ignored, the app owns
//! the port (`APP_LISTEN`, default 127.0.0.1:8000).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use redis_probe::config::Config;
use redis_probe::server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None).map_err(|e| format!("invalid configuration:\n{e}"))?;
    redis_probe::logging::init(&config.log);

    // The sidecar's own wiring (health loop, INFO reads, pool and certificate watchers, checks
    // beside Redis); the app serves its state. The tasks stop when `sidecar` is dropped.
    let sidecar = redis_probe::spawn(&config)?;
    let state = sidecar.state.clone();

    let addr = std::env::var("APP_LISTEN").unwrap_or_else(|_| "127.0.0.1:8000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("app on http://{addr}/ with /readyz, /livez and /metrics from redis-probe");
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path();
                    let rsp = if path == "/metrics"
                        || path.starts_with("/readyz")
                        || path.starts_with("/livez")
                    {
                        // Answered from published state: never waits on Redis.
                        server::handle(&state, &req)
                    } else {
                        Response::new(Full::new(Bytes::from_static(b"hello from the app\n")))
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(server::HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
