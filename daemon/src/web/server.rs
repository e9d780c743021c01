//! The HTTP(S) + WebSocket server: hyper (HTTP/1.1 with upgrades) on a tokio runtime of its
//! own thread, tokio-rustls for TLS, tokio-tungstenite for the WebSocket framing. Routes:
//! `/` (the page), `/api/chat` (Kyutai's protocol), `/api/state` and `/api/control` (the
//! page's device panel).

use super::auth::{self, Net};
use super::backend::{Backend, DeviceState};
use super::config::{Busy, WebConfig};
use super::conns::{Admission, Conns, Throttled};
use super::origin::Site;
use super::params::{self, SessionSampling};
use super::protocol::{self, BuildInfo, Metadata};
use super::session::{self, Limits};
use crate::engine::PersonaRequest;
use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
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
    /// The names the device answers to (Host and Origin checks).
    site: Site,
    /// The one conversation.
    slot: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Open connections, per address.
    conns: Arc<Conns>,
    /// Connections refused or closed for room: a peer can make these as fast as it loops.
    refused_log: Throttled,
    /// Requests refused (token, Host, Origin): as many as a peer sends.
    denied_log: Throttled,
}

/// One line per this interval for lines a peer can repeat at will.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

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
        // One permit per conversation the backend can hold at once.
        let conversations = backend.max_conversations().max(1);
        let ctx = Arc::new(Ctx {
            site: Site::new(&cfg.hosts, tls.is_some()),
            conns: Conns::new(
                cfg.max_connections,
                cfg.max_connections_per_address,
                trusted.clone(),
            ),
            refused_log: Throttled::new(LOG_INTERVAL),
            denied_log: Throttled::new(LOG_INTERVAL),
            tls: tls.is_some(),
            cfg,
            backend,
            token,
            trusted,
            slot: Arc::new(Semaphore::new(conversations)),
            waiting: AtomicUsize::new(0),
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
                    ctx.refused_log.log(log::Level::Warn, format_args!("web: accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admission = match ctx.conns.admit(peer.ip()) {
            Ok(a) => Arc::new(a),
            Err(why) => {
                let line = format_args!("web: {peer}: {why}; closed");
                ctx.refused_log.log(log::Level::Warn, line);
                continue;
            }
        };
        if admission.evicted_another {
            let line = format_args!("web: {peer}: all connections taken: closed the oldest one that had not authenticated");
            ctx.refused_log.log(log::Level::Warn, line);
        }
        let _ = tcp.set_nodelay(true);
        // The address the client reached: a Host naming it names the device.
        let local = tcp.local_addr().map_or(ctx.cfg.listen.ip(), |a| a.ip());
        let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
        let peer = Peer { addr: peer, local };
        tokio::spawn(async move {
            tokio::select! {
                _ = connection(tcp, acceptor, peer, ctx, admission.clone()) => {}
                _ = admission.evicted() => log::debug!("web: {peer}: closed to make room"),
            }
        });
    }
}

/// One accepted connection: TLS, then HTTP until it closes or upgrades (the WebSocket
/// session then holds `admission`).
async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    peer: Peer,
    ctx: Arc<Ctx>,
    admission: Arc<Admission>,
) {
    let Some(a) = acceptor else {
        return serve(tcp, peer, ctx, admission).await;
    };
    match tokio::time::timeout(Duration::from_secs(10), a.accept(tcp)).await {
        Ok(Ok(s)) => serve(s, peer, ctx, admission).await,
        Ok(Err(e)) => log::debug!("web: {peer}: TLS: {e}"),
        Err(_) => log::debug!("web: {peer}: TLS handshake timed out"),
    }
}

/// Both ends of a connection.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// The client.
    addr: SocketAddr,
    /// The device's address it connected to.
    local: IpAddr,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

async fn serve<I>(io: I, peer: Peer, ctx: Arc<Ctx>, admission: Arc<Admission>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let (ctx, adm) = (ctx.clone(), admission.clone());
        async move { Ok::<_, std::convert::Infallible>(route(req, peer, ctx, adm)) }
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

/// True when the request's URL carries the right token (`?token=`, `?worker_auth_id=`).
fn token_in_url(ctx: &Ctx, pairs: &[(String, String)]) -> bool {
    params::token(pairs, None).is_some_and(|t| auth::token_matches(&t, &ctx.token))
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

/// The Host and Origin checks (see `origin.rs`): every request must name the device; those
/// that change state (anything but GET/HEAD, and the WebSocket upgrade) must come from its
/// own page, or bring the token in the URL.
fn site_check(
    req: &Request<Incoming>,
    peer: Peer,
    ctx: &Ctx,
    pairs: &[(String, String)],
) -> Result<(), super::origin::Refused> {
    let h = req.headers();
    let value = |name| {
        h.get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    // HTTP/1.1 puts the authority in Host; an absolute request URI's wins (RFC 9112 3.2.2).
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or(value(header::HOST));
    let guarded =
        !matches!(*req.method(), Method::GET | Method::HEAD) || req.uri().path() == "/api/chat";
    let with_token = token_in_url(ctx, pairs);
    ctx.site
        .check(host, value(header::ORIGIN), peer.local, guarded, with_token)
}

fn route(
    req: Request<Incoming>,
    peer: Peer,
    ctx: Arc<Ctx>,
    admission: Arc<Admission>,
) -> Response<Body> {
    let pairs = params::pairs(req.uri().query());
    let path = req.uri().path().to_string();
    let asset = super::page::asset(&path);
    let api = matches!(
        path.as_str(),
        "/api/chat" | "/api/state" | "/api/control" | "/api/room" | "/api/personas"
    );
    if asset.is_none() && !api {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if let Err(why) = site_check(&req, peer, &ctx, &pairs) {
        let line = format_args!("web: {peer}: {} {path} refused: {why}", req.method());
        ctx.denied_log.log(log::Level::Info, line);
        return text(StatusCode::FORBIDDEN, &format!("moshid: {why}\n"));
    }
    let peer = peer.addr;
    if let Some(asset) = asset {
        if path == "/" || path == "/index.html" {
            return page(&req, peer, &ctx, &pairs, asset, &admission);
        }
        return respond(StatusCode::OK, asset.0, asset.1);
    }
    if !authorized(&ctx, peer, &pairs, &req) {
        let line = format_args!("web: {peer}: {path} refused (no valid token)");
        ctx.denied_log.log(log::Level::Info, line);
        return unauthorized();
    }
    admission.authenticate();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/api/chat") => chat(req, peer, ctx, &pairs, admission),
        (&Method::GET, "/api/state") => state(&ctx),
        (&Method::GET, "/api/personas") => personas(&ctx),
        (&Method::POST, "/api/control") => control(&ctx, &pairs),
        (&Method::GET, "/api/room") => room(&ctx, &pairs),
        (&Method::POST, "/api/room") => room_control(&ctx, &pairs),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

fn page(
    req: &Request<Incoming>,
    peer: SocketAddr,
    ctx: &Ctx,
    pairs: &[(String, String)],
    asset: (&'static str, &'static [u8]),
    admission: &Admission,
) -> Response<Body> {
    if !authorized(ctx, peer, pairs, req) {
        return unauthorized();
    }
    admission.authenticate();
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
    /// Open connections: page, API and WebSocket sessions (what `max_connections` bounds).
    web_connections: usize,
}

fn state(ctx: &Ctx) -> Response<Body> {
    let s = PageState {
        device: ctx.backend.state(),
        web_waiting: ctx.waiting.load(Ordering::Relaxed),
        web_connections: ctx.conns.len(),
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

/// `GET /api/personas`: the names `/api/chat?persona=` takes (the page's persona select).
fn personas(ctx: &Ctx) -> Response<Body> {
    let list = super::backend::PersonaList {
        personas: ctx.backend.personas(),
    };
    match serde_json::to_vec(&list) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

/// `GET /api/room?since=N`: the room's conversation for the kiosk screen.
fn room(ctx: &Ctx, pairs: &[(String, String)]) -> Response<Body> {
    let since = pairs
        .iter()
        .find(|(k, _)| k == "since")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let Some(view) = ctx.backend.room(since) else {
        let why = "no room here (the offline demo serves browser sessions only)\n";
        return text(StatusCode::NOT_FOUND, why);
    };
    match serde_json::to_string(&view) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("room: {e}"),
        ),
    }
}

/// `POST /api/room?conversation=1|0`: starts or stops the room's conversation (the kiosk's
/// Talk and Stop).
fn room_control(ctx: &Ctx, pairs: &[(String, String)]) -> Response<Body> {
    let want = pairs.iter().find(|(k, _)| k == "conversation");
    let on = match want.map(|(_, v)| v.trim().to_ascii_lowercase()).as_deref() {
        Some("1" | "on" | "true") => true,
        Some("0" | "off" | "false") => false,
        _ => {
            let why = "POST /api/room needs conversation=1 (start) or conversation=0 (stop)\n";
            return text(StatusCode::BAD_REQUEST, why);
        }
    };
    match ctx.backend.room_conversation(on) {
        Ok(()) => room(ctx, &[]),
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
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
    admission: Arc<Admission>,
) -> Response<Body> {
    let sampling = match params::sampling(pairs) {
        Ok(s) => s,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let persona = match params::persona(pairs) {
        Ok(p) => p,
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
                run_chat(ws, peer, ctx, sampling, persona).await;
                // Counted in web_connections until the session's socket closes.
                drop(admission);
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
    persona: Option<PersonaRequest>,
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
    // A persona's first use runs its prompt: off the server's thread.
    let backend = ctx.backend.clone();
    let opened = tokio::task::spawn_blocking(move || backend.open_as(peer, s, persona.as_ref()));
    let talk = match opened.await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return reject(ws, &e).await,
        Err(e) => return reject(ws, &format!("the session could not start: {e}")).await,
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
                conversations: 0,
                clients: vec![],
                phase: "idle",
                endpoint: None,
                client: None,
                voice: "moshiko".into(),
                muted: false,
                volume: 70,
                step_ms: 12.3,
                rtf: 0.154,
                steps: 9,
                frames: 9,
                web_dropped_input: 1,
                web_dropped_output: 2,
            }),
            web_waiting: 3,
            web_connections: 4,
        };
        let v = serde_json::to_value(&s).unwrap();
        let want = serde_json::json!({
            "conversations": 0, "clients": [],
            "phase": "idle", "endpoint": null, "client": null, "voice": "moshiko",
            "muted": false, "volume": 70, "step_ms": 12.3, "rtf": 0.154, "steps": 9,
            "frames": 9, "web_dropped_input": 1, "web_dropped_output": 2,
            "web_waiting": 3, "web_connections": 4,
        });
        assert_eq!(v, want);
    }
}
