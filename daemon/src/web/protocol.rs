//! The messages of Kyutai's `/api/chat` protocol (PROTOCOL.md, "Messages"): one kind byte,
//! then the payload.

/// Message kinds a server sends or accepts. Never send a kind the web client does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// u32 protocol version + u32 model version.
    Handshake = 0,
    /// Ogg pages of Opus, 24 kHz mono.
    Audio = 1,
    /// One decoded text piece (UTF-8).
    Text = 2,
    /// One byte: start 0, end-turn 1, pause 2, restart 3.
    Control = 3,
    /// UTF-8 JSON.
    Metadata = 4,
    /// UTF-8 message.
    Error = 5,
    /// Unused.
    Ping = 6,
    /// One colour byte + UTF-8 (moshi-server only).
    ColoredText = 7,
}

impl Kind {
    /// The kind of a message, None for kinds the protocol does not define (discarded).
    pub fn of(msg: &[u8]) -> Option<Kind> {
        Some(match *msg.first()? {
            0 => Kind::Handshake,
            1 => Kind::Audio,
            2 => Kind::Text,
            3 => Kind::Control,
            4 => Kind::Metadata,
            5 => Kind::Error,
            6 => Kind::Ping,
            7 => Kind::ColoredText,
            _ => return None,
        })
    }
}

/// A message of `kind` with `payload`.
pub fn message(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + payload.len());
    m.push(kind as u8);
    m.extend_from_slice(payload);
    m
}

/// The handshake: protocol version 0, model version 0 (9 bytes, as Kyutai's Rust server).
pub fn handshake() -> Vec<u8> {
    let mut m = vec![Kind::Handshake as u8];
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m
}

/// A text piece.
pub fn text(piece: &str) -> Vec<u8> {
    message(Kind::Text, piece.as_bytes())
}

/// An error message (the session closes after it).
pub fn error(what: &str) -> Vec<u8> {
    message(Kind::Error, what.as_bytes())
}

/// Build facts for the metadata's `build_info`, fixed at compile time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildInfo {
    /// When the binary was built (RFC 3339) or "unknown".
    pub build_timestamp: String,
    /// Its date part.
    pub build_date: String,
    /// Branch, or "unknown" when built outside git.
    pub git_branch: String,
    /// Commit time.
    pub git_timestamp: String,
    /// Commit date.
    pub git_date: String,
    /// Commit hash.
    pub git_hash: String,
    /// `git describe` output.
    pub git_describe: String,
    /// The compiler's host.
    pub rustc_host_triple: String,
    /// The compiler's version.
    pub rustc_version: String,
    /// The target.
    pub cargo_target_triple: String,
}

impl BuildInfo {
    /// This binary's facts (from build.rs environment variables).
    pub fn current() -> BuildInfo {
        let s = |v: Option<&str>| v.unwrap_or("unknown").to_string();
        let ts = s(option_env!("MOSHID_BUILD_TIMESTAMP"));
        let gts = s(option_env!("MOSHID_GIT_TIMESTAMP"));
        BuildInfo {
            build_date: ts.get(..10).unwrap_or("unknown").to_string(),
            build_timestamp: ts,
            git_branch: s(option_env!("MOSHID_GIT_BRANCH")),
            git_date: gts.get(..10).unwrap_or("unknown").to_string(),
            git_timestamp: gts,
            git_hash: s(option_env!("MOSHID_GIT_HASH")),
            git_describe: s(option_env!("MOSHID_GIT_DESCRIBE")),
            rustc_host_triple: s(option_env!("MOSHID_RUSTC_HOST")),
            rustc_version: s(option_env!("MOSHID_RUSTC_VERSION")),
            cargo_target_triple: s(option_env!("MOSHID_TARGET")),
        }
    }
}

/// The metadata JSON, with the keys of Kyutai's Rust server (its web client shows its
/// server-info panel only for exactly this schema).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metadata {
    /// Session text temperature.
    pub text_temperature: f64,
    /// Session text top-k.
    pub text_topk: usize,
    /// Session audio temperature.
    pub audio_temperature: f64,
    /// Session audio top-k.
    pub audio_topk: usize,
    /// Padding multiplier (moshid does not use one: 0).
    pub pad_mult: f32,
    /// Repetition penalty context (moshid applies none: 0).
    pub repetition_penalty_context: usize,
    /// Repetition penalty (1 = none).
    pub repetition_penalty: f32,
    /// The LM weights file.
    pub lm_model_file: String,
    /// The Mimi weights file.
    pub mimi_model_file: String,
    /// "moshid <version> on <host>".
    pub instance_name: String,
    /// Build facts.
    pub build_info: BuildInfo,
}

impl Metadata {
    /// The kind-4 message.
    pub fn to_message(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        message(Kind::Metadata, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_nine_bytes_of_version_zero() {
        assert_eq!(handshake(), vec![0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn kinds_round_trip_and_unknown_kinds_are_none() {
        for k in 0u8..8 {
            assert_eq!(Kind::of(&[k, 1, 2]).map(|k| k as u8), Some(k));
        }
        assert_eq!(Kind::of(&[8]), None);
        assert_eq!(Kind::of(&[]), None);
        assert_eq!(text("hi "), b"\x02hi ".to_vec());
    }

    #[test]
    fn metadata_has_the_keys_of_kyutais_schema() {
        let m = Metadata {
            text_temperature: 0.7,
            text_topk: 25,
            audio_temperature: 0.8,
            audio_topk: 250,
            pad_mult: 0.0,
            repetition_penalty_context: 0,
            repetition_penalty: 1.0,
            lm_model_file: "lm".into(),
            mimi_model_file: "mimi".into(),
            instance_name: "moshid".into(),
            build_info: BuildInfo::current(),
        };
        let msg = m.to_message();
        assert_eq!(msg[0], 4);
        let v: serde_json::Value = serde_json::from_slice(&msg[1..]).unwrap();
        for k in [
            "text_temperature",
            "text_topk",
            "audio_temperature",
            "audio_topk",
            "pad_mult",
            "repetition_penalty_context",
            "repetition_penalty",
            "lm_model_file",
            "mimi_model_file",
            "instance_name",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        for k in [
            "build_timestamp",
            "build_date",
            "git_branch",
            "git_timestamp",
            "git_date",
            "git_hash",
            "git_describe",
            "rustc_host_triple",
            "rustc_version",
            "cargo_target_triple",
        ] {
            assert!(v["build_info"].get(k).is_some(), "{k}");
        }
    }
}
