//! The endpoint's TLS: rustls with the ring provider (the project avoids aws-lc), and a
//! self-signed certificate made by `rcgen` at first start and kept across restarts.

use super::config::{TlsMode, WebConfig};
use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the self-signed pair lives.
fn self_signed_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("web-cert.pem"), dir.join("web-key.pem"))
}

/// Names the certificate is valid for: localhost, the host name, loopback, the listen IP.
fn subject_names(cfg: &WebConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = hostname::get() {
        let h = h.to_string_lossy().to_string();
        if !h.is_empty() {
            names.push(format!("{h}.local"));
            names.push(h);
        }
    }
    if !cfg.listen.ip().is_unspecified() {
        names.push(cfg.listen.ip().to_string());
    }
    names.dedup();
    names
}

/// Makes the self-signed certificate unless it exists; returns its paths.
pub fn ensure_self_signed(cfg: &WebConfig) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = cfg.state_dir();
    let (cert, key) = self_signed_paths(&dir);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let made = rcgen::generate_simple_self_signed(subject_names(cfg))
        .context("cannot make a self-signed certificate")?;
    let mut k = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .with_context(|| format!("cannot write {}", key.display()))?;
    k.write_all(made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    log::info!("made a self-signed certificate: {}", cert.display());
    Ok((cert, key))
}

/// Reads a PEM certificate chain and its key into a server configuration.
pub fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .with_context(|| format!("cannot read {}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut open(key)?)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the key do not go together")?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(sc)
}

/// The TLS server configuration, None for `tls = "off"`.
pub fn server_config(cfg: &WebConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    if cfg.tls == TlsMode::Off {
        return Ok(None);
    }
    let (cert, key) = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_self_signed(cfg)?,
    };
    Ok(Some(Arc::new(read_pair(&cert, &key)?)))
}
