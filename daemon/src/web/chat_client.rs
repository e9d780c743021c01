//! The client side of Kyutai's `/api/chat`, shared by `moshid client` and a satellite's
//! link to its brain: TCP, TLS (`client_tls.rs`), the WebSocket upgrade with the token and
//! sampling as query parameters, and failures a person can act on.

use super::protocol::Kind;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// A byte stream the WebSocket runs on: plain TCP or TLS.
pub trait ChatIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ChatIo for T {}

/// An open `/api/chat` WebSocket.
pub type ChatSocket = WebSocketStream<Box<dyn ChatIo>>;

/// Why a server could not be talked to.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The address is not a ws:// or wss:// URL.
    #[error("{0:?} is not a ws:// or wss:// URL")]
    Url(String),
    /// No TCP connection (nothing listens, no route, or it took too long).
    #[error("cannot reach {addr}: {why}")]
    Unreachable {
        /// host:port.
        addr: String,
        /// The system's reason.
        why: String,
    },
    /// The TLS handshake failed: usually a certificate we do not trust.
    #[error("TLS with {addr} failed: {why} (pin the server's certificate with --ca / ca_file, or accept any with --insecure / insecure = true)")]
    Tls {
        /// host:port.
        addr: String,
        /// rustls' reason.
        why: String,
    },
    /// The server answered the upgrade with an HTTP status.
    #[error("the server refused the connection: HTTP {status}{}", hint(*status))]
    Refused {
        /// HTTP status.
        status: u16,
    },
    /// The WebSocket upgrade failed otherwise.
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(String),
}

fn hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (the token was refused: copy the server's web-token file and pass it as --token / token_file)",
        400 => " (a query parameter was refused)",
        404 => " (no /api/chat there: check the path)",
        _ => "",
    }
}

/// Where to connect and how: the URL with its query, and TLS for wss://.
pub struct ChatTarget {
    url: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ChatTarget {
    /// `url` (ws:// or wss://) plus `query` pairs (the token, sampling) appended; `tls` is
    /// used for wss:// (None there: an error).
    pub fn new(
        url: &str,
        query: &[(&str, String)],
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<ChatTarget, ChatError> {
        let mut full = url.to_string();
        for (k, v) in query {
            full.push(if full.contains('?') { '&' } else { '?' });
            full.push_str(k);
            full.push('=');
            full.push_str(&encode(v));
        }
        let req = full
            .as_str()
            .into_client_request()
            .map_err(|_| ChatError::Url(url.to_string()))?;
        let uri = req.uri();
        let host = uri
            .host()
            .ok_or_else(|| ChatError::Url(url.to_string()))?
            .trim_matches(['[', ']'])
            .to_string();
        let secure = uri.scheme_str() == Some("wss");
        if !secure && uri.scheme_str() != Some("ws") || secure && tls.is_none() {
            return Err(ChatError::Url(url.to_string()));
        }
        Ok(ChatTarget {
            port: uri.port_u16().unwrap_or(if secure { 443 } else { 80 }),
            host,
            tls: tls.filter(|_| secure),
            url: full,
        })
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects and upgrades, each step bounded by `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<ChatSocket, ChatError> {
        let addr = self.addr();
        let unreachable = |why: String| ChatError::Unreachable {
            addr: addr.clone(),
            why,
        };
        let tcp = tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", timeout.as_secs_f32())))?
        .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn ChatIo> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(self.tls_handshake(tls.clone(), tcp, timeout).await?),
        };
        let req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| ChatError::Url(self.url.clone()))?;
        let up = tokio::time::timeout(timeout, tokio_tungstenite::client_async(req, io)).await;
        match up {
            Err(_) => Err(ChatError::Upgrade(format!(
                "no answer within {} s",
                timeout.as_secs_f32()
            ))),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(r))) => Err(ChatError::Refused {
                status: r.status().as_u16(),
            }),
            Ok(Err(e)) => Err(ChatError::Upgrade(e.to_string())),
        }
    }

    async fn tls_handshake(
        &self,
        tls: Arc<rustls::ClientConfig>,
        tcp: tokio::net::TcpStream,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ChatError> {
        let fail = |why: String| ChatError::Tls {
            addr: self.addr(),
            why,
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| fail(format!("{:?} is not a valid server name: {e}", self.host)))?;
        let hs = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
        tokio::time::timeout(timeout, hs)
            .await
            .map_err(|_| fail("no answer".into()))?
            .map_err(|e| fail(e.to_string()))
    }
}

/// Percent-encodes a query value (unreserved characters stay).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What came before the handshake, when the server sent no handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A kind-5 message (e.g. `busy`).
    #[error("the server said: {0}")]
    Said(String),
    /// The socket closed or failed.
    #[error("the connection ended before the handshake{0}")]
    Closed(String),
    /// Nothing within the time allowed (a server that queues us: busy).
    #[error("no handshake within {0} s (the server is busy?)")]
    Timeout(u64),
}

/// Waits for the handshake (kind 0), skipping metadata and other kinds that may come first;
/// the metadata JSON if one came before it.
pub async fn await_handshake(
    ws: &mut ChatSocket,
    timeout: Duration,
) -> Result<Option<serde_json::Value>, HandshakeError> {
    let mut meta = None;
    let wait = async {
        while let Some(m) = ws.next().await {
            let b = match m {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => return Err(HandshakeError::Closed(format!(": {e}"))),
            };
            match Kind::of(&b) {
                Some(Kind::Handshake) => return Ok(()),
                Some(Kind::Error) => {
                    return Err(HandshakeError::Said(
                        String::from_utf8_lossy(&b[1..]).into_owned(),
                    ))
                }
                Some(Kind::Metadata) => meta = serde_json::from_slice(&b[1..]).ok(),
                _ => {}
            }
        }
        Err(HandshakeError::Closed(String::new()))
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(meta),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HandshakeError::Timeout(timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_appended_and_encoded() {
        let q = [("token", "a b&c".to_string()), ("text_topk", "25".into())];
        let t = ChatTarget::new("ws://127.0.0.1:9/api/chat?x=1", &q, None).unwrap();
        assert_eq!(
            t.url,
            "ws://127.0.0.1:9/api/chat?x=1&token=a%20b%26c&text_topk=25"
        );
        assert_eq!(t.addr(), "127.0.0.1:9");
    }

    #[test]
    fn wss_without_tls_and_non_websocket_urls_are_refused() {
        assert!(ChatTarget::new("wss://h/api/chat", &[], None).is_err());
        assert!(ChatTarget::new("https://h/api/chat", &[], None).is_err());
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e = ChatError::Refused { status: 401 }.to_string();
        assert!(e.contains("HTTP 401") && e.contains("token"), "{e}");
    }
}
