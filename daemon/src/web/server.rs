//! The HTTP(S) + WebSocket server: hyper (HTTP/1.1 with upgrades) on a tokio runtime of its
//! own thread, tokio-rustls for TLS, tokio-tungstenite for the WebSocket framing. Routes:
//! `/` (the page), `/api/chat` (Kyutai's protocol), `/api/state` and `/api/control` (the
//! page's device panel).

use super::auth::{self, Net};
use super::backend::{Backend, DeviceState};
use super::config::{Busy, WebConfig};
use super::params::{self, SessionSampling};
use super::protocol::{self, BuildInfo, Metadata};
use super::session::{self, Limits};
use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = Full<Bytes>;

/// Everything a request handler needs.
struct Ctx {
    cfg: WebConfig,
    backend: Arc<dyn Backend>,
    token: String,
    trusted: Vec<Net>,
    tls: bool,
    /// The one conversation.
    slot: Arc<Semaphore>,
    waiting: AtomicUsize,
    connections: AtomicUsize,
}

/// A running server.
pub struct WebServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebServer {
    /// Binds `[web] listen` and serves on a thread of its own.
    pub fn start(cfg: WebConfig, backend: Arc<dyn Backend>) -> anyhow::Result<WebServer> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        let tls = super::tls::server_config(&cfg)?;
        let token_path = cfg.token_path();
        let token = auth::load_or_create_token(&token_path).with_context(|| {
            format!(
                "cannot read or make the token file {}",
                token_path.display()
            )
        })?;
        let trusted = cfg.trusted_nets().map_err(anyhow::Error::msg)?;
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("[web] cannot listen on {}", cfg.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ctx = Arc::new(Ctx {
            tls: tls.is_some(),
            cfg,
            backend,
            token,
            trusted,
            slot: Arc::new(Semaphore::new(1)),
            waiting: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("moshid-web".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return log::error!("web: cannot start its runtime: {e}"),
                };
                rt.block_on(accept_loop(listener, tls, ctx, stop_rx));
            })?;
        log::info!("web: serving {scheme}://{addr}/ (the page) and /api/chat");
        Ok(WebServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound address (the port, when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends every connection (their sessions give the model back).
    pub fn stop(mut self, timeout: Duration) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let end = std::time::Instant::now() + timeout;
            while !t.is_finished() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ctx: Arc<Ctx>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return log::error!("web: {e}"),
    };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    log::warn!("web: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if ctx.connections.fetch_add(1, Ordering::Relaxed) >= ctx.cfg.max_connections {
            ctx.connections.fetch_sub(1, Ordering::Relaxed);
            log::warn!(
                "web: {peer}: over max_connections ({}); closed",
                ctx.cfg.max_connections
            );
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                None => serve(tcp, peer, ctx.clone()).await,
                Some(a) => {
                    match tokio::time::timeout(Duration::from_secs(10), a.accept(tcp)).await {
                        Ok(Ok(s)) => serve(s, peer, ctx.clone()).await,
                        Ok(Err(e)) => log::debug!("web: {peer}: TLS: {e}"),
                        Err(_) => log::debug!("web: {peer}: TLS handshake timed out"),
                    }
                }
            }
            ctx.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve<I>(io: I, peer: SocketAddr, ctx: Arc<Ctx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, peer, ctx)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        log::debug!("web: {peer}: {e}");
    }
}

fn respond(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(kind) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

/// True when the peer is trusted or brings the right token.
fn authorized(
    ctx: &Ctx,
    peer: SocketAddr,
    pairs: &[(String, String)],
    req: &Request<Incoming>,
) -> bool {
    if ctx.trusted.iter().any(|n| n.contains(peer.ip())) {
        return true;
    }
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok());
    params::token(pairs, cookie).is_some_and(|t| auth::token_matches(&t, &ctx.token))
}

fn unauthorized() -> Response<Body> {
    text(
        StatusCode::UNAUTHORIZED,
        "moshid: a token is needed from this address: open the page as /?token=TOKEN \
         (the token is in the web-token file of moshid's state directory), or pass \
         ?token= to /api/chat\n",
    )
}

fn route(req: Request<Incoming>, peer: SocketAddr, ctx: Arc<Ctx>) -> Response<Body> {
    let pairs = params::pairs(req.uri().query());
    let path = req.uri().path().to_string();
    if let Some(asset) = super::page::asset(&path) {
        if path == "/" || path == "/index.html" {
            return page(&req, peer, &ctx, &pairs, asset);
        }
        return respond(StatusCode::OK, asset.0, asset.1);
    }
    let known = matches!(path.as_str(), "/api/chat" | "/api/state" | "/api/control");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !authorized(&ctx, peer, &pairs, &req) {
        log::info!("web: {peer}: {path} refused (no valid token)");
        return unauthorized();
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/api/chat") => chat(req, peer, ctx, &pairs),
        (&Method::GET, "/api/state") => state(&ctx),
        (&Method::POST, "/api/control") => control(&ctx, &pairs),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

fn page(
    req: &Request<Incoming>,
    peer: SocketAddr,
    ctx: &Ctx,
    pairs: &[(String, String)],
    asset: (&'static str, &'static [u8]),
) -> Response<Body> {
    if !authorized(ctx, peer, pairs, req) {
        return unauthorized();
    }
    let mut r = respond(StatusCode::OK, asset.0, asset.1);
    // Opened with ?token=: remember it, so the page's WebSocket and API calls carry it.
    if let Some(t) = params::token(pairs, None).filter(|t| auth::token_matches(t, &ctx.token)) {
        let cookie = format!(
            "{}={t}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000{}",
            auth::COOKIE,
            if ctx.tls { "; Secure" } else { "" }
        );
        if let Ok(v) = header::HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    r
}

/// `/api/state`: the device's state and the endpoint's own counters.
#[derive(Serialize)]
struct PageState {
    #[serde(flatten)]
    device: DeviceState,
    /// Clients waiting for the conversation.
    web_waiting: usize,
    /// Open WebSocket connections.
    web_connections: usize,
}

fn state(ctx: &Ctx) -> Response<Body> {
    let s = PageState {
        device: ctx.backend.state(),
        web_waiting: ctx.waiting.load(Ordering::Relaxed),
        web_connections: ctx.connections.load(Ordering::Relaxed),
    };
    match serde_json::to_string(&s) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("state: {e}"),
        ),
    }
}

/// `POST /api/control`: every parameter is checked first, so a bad value (`mute=yes`,
/// `volume=999`) is a 400 naming it and nothing is applied.
fn control(ctx: &Ctx, pairs: &[(String, String)]) -> Response<Body> {
    let controls = match params::controls(pairs) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    for c in controls {
        if let Err(e) = ctx.backend.control(c) {
            return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        }
    }
    state(ctx)
}

fn chat(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    pairs: &[(String, String)],
) -> Response<Body> {
    let sampling = match params::sampling(pairs) {
        Ok(s) => s,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let h = req.headers();
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
        return text(
            StatusCode::BAD_REQUEST,
            "/api/chat is a WebSocket endpoint\n",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let limit = Some(ctx.cfg.max_message_bytes);
                let wsc = WebSocketConfig::default()
                    .max_message_size(limit)
                    .max_frame_size(limit);
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, Some(wsc))
                        .await;
                run_chat(ws, peer, ctx, sampling).await;
            }
            Err(e) => log::debug!("web: {peer}: upgrade: {e}"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    hs.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn reject<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, why: &str) {
    let _ = ws.send(Message::Binary(protocol::error(why).into())).await;
    let _ = ws.close(None).await;
}

/// Waits for the conversation slot; None when the client left meanwhile.
async fn wait_for_slot<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    ctx: &Ctx,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        tokio::select! {
            p = ctx.slot.clone().acquire_owned() => return p.ok(),
            m = ws.next() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(_)) => {} // nothing is read before the handshake
            },
        }
    }
}

async fn run_chat<S>(
    mut ws: WebSocketStream<S>,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    s: SessionSampling,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let permit = match ctx.slot.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) if ctx.cfg.busy == Busy::Reject => {
            log::info!("web: {peer}: busy, rejected");
            return reject(ws, "busy: another conversation is in progress").await;
        }
        Err(_) => {
            if ctx.waiting.fetch_add(1, Ordering::Relaxed) >= ctx.cfg.queue {
                ctx.waiting.fetch_sub(1, Ordering::Relaxed);
                log::info!("web: {peer}: busy and the queue is full, rejected");
                return reject(ws, "busy: too many clients waiting").await;
            }
            log::info!("web: {peer}: waiting for the conversation");
            let p = wait_for_slot(&mut ws, &ctx).await;
            ctx.waiting.fetch_sub(1, Ordering::Relaxed);
            match p {
                Some(p) => p,
                None => return,
            }
        }
    };
    let talk = match ctx.backend.open(peer, s) {
        Ok(t) => t,
        Err(e) => return reject(ws, &e).await,
    };
    log::info!("web: {peer}: conversation started");
    let first = ws.send(Message::Binary(protocol::handshake().into())).await;
    let meta = metadata(&ctx, &s).to_message();
    if first.is_err() || ws.send(Message::Binary(meta.into())).await.is_err() {
        return;
    }
    let limits = Limits {
        idle: Duration::from_secs(ctx.cfg.idle_timeout_s),
        input_queue: ctx.cfg.input_queue_frames,
        output_queue: ctx.cfg.output_queue_frames,
    };
    let ended = session::converse(&mut ws, talk, ctx.backend.clone(), limits).await;
    drop(permit);
    log::info!("web: {peer}: conversation ended ({ended:?})");
}

fn metadata(ctx: &Ctx, s: &SessionSampling) -> Metadata {
    let m = ctx.backend.model_info();
    let host = hostname::get()
        .map(|h| h.to_string_lossy().to_string())
        .unwrap_or_default();
    Metadata {
        text_temperature: s.text_temperature.unwrap_or(m.text_temperature),
        text_topk: s.text_topk.unwrap_or(m.text_topk),
        audio_temperature: s.audio_temperature.unwrap_or(m.audio_temperature),
        audio_topk: s.audio_topk.unwrap_or(m.audio_topk),
        pad_mult: 0.0,
        repetition_penalty_context: 0,
        repetition_penalty: 1.0,
        lm_model_file: m.lm_file,
        mimi_model_file: m.mimi_file,
        instance_name: format!("moshid {} on {host}", env!("CARGO_PKG_VERSION")),
        build_info: BuildInfo::current(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::backend::DemoState;

    /// The demo's `/api/state` keeps the keys (and the nulls while idle) the page reads.
    #[test]
    fn the_demo_page_state_is_one_flat_object_with_the_page_keys() {
        let s = PageState {
            device: DeviceState::Demo(DemoState {
                phase: "idle",
                endpoint: None,
                client: None,
                voice: "moshiko".into(),
                muted: false,
                volume: 70,
                step_ms: 12.3,
                rtf: 0.154,
                steps: 9,
                web_dropped_input: 1,
                web_dropped_output: 2,
            }),
            web_waiting: 3,
            web_connections: 4,
        };
        let v = serde_json::to_value(&s).unwrap();
        let want = serde_json::json!({
            "phase": "idle", "endpoint": null, "client": null, "voice": "moshiko",
            "muted": false, "volume": 70, "step_ms": 12.3, "rtf": 0.154, "steps": 9,
            "web_dropped_input": 1, "web_dropped_output": 2,
            "web_waiting": 3, "web_connections": 4,
        });
        assert_eq!(v, want);
    }
}
