//! A small HTTP backend for gateway tests and benchmarks: it answers with
//! its id, the path and the forwarding headers it saw, and registers itself
//! when asked. Special paths: `/slow/<ms>` waits, `/hang` never answers,
//! `/status/<code>` answers that status, POST echoes the body.

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "HTTP backend for gateway tests and benchmarks")]
struct Args {
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Id reported in every answer (default: the address).
    #[arg(long)]
    id: Option<String>,
    /// Register as an instance of this service.
    #[arg(long)]
    register: Option<String>,
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// Lease TTL of the registration, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let id: Arc<str> = args.id.clone().unwrap_or_else(|| addr.to_string()).into();
    let _registration = match &args.register {
        Some(service) => {
            let registry =
                roster::Registry::new(roster::Client::new(roster::ClientConfig::from_list(&args.endpoints))?)
                    .with_ttl(Duration::from_secs(args.ttl));
            let inst = roster::Instance::new(service.as_str(), addr.to_string()).with_id(id.to_string());
            Some(registry.register(inst).await?)
        }
        None => None,
    };
    println!("listening {addr} id {id}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = id.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(id.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(id: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|m| m.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    } else if path == "/hang" {
        std::future::pending::<()>().await;
    } else if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    }
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (xff, proto, xhost, conn) =
        (header("x-forwarded-for"), header("x-forwarded-proto"), header("x-forwarded-host"), header("x-secret"));
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let json = serde_json::json!({
        "id": &*id, "method": method, "path": path, "query": query,
        "x_forwarded_for": xff, "x_forwarded_proto": proto, "x_forwarded_host": xhost, "x_secret": conn,
        "body_len": body.len(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(resp)
}
