//! Fuzz entry points for the daemon's parsers of outside input: the configuration file (as
//! `check-config` reads and reports it), MQTT command payloads, the codes JSON of `codec
//! decode`, and the web endpoint's Ogg page reader and client messages. Each must return
//! for any input.
//!
//! The daemon is a binary crate, so the cargo-fuzz crate (`fuzz/`) compiles this file and the
//! parser modules it names from their sources with `#[path]` (fuzz/src/lib.rs), at the same
//! `crate::` paths; here it is compiled for the tests only, which replay the committed
//! seeds in fuzz/seeds/ (`cargo test`).

use crate::codes::CodesFile;
use crate::config::Config;
use crate::control::parse_command;
use crate::web::ogg::OggReader;
use crate::web::protocol::Kind;
use crate::web::stream::AudioIn;
use moshid_hal::FRAME_SAMPLES;
use std::path::Path;

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by the name of their seed folder.
pub const TARGETS: [(&str, Target); 5] = [
    ("config", config),
    ("mqtt_command", mqtt_command),
    ("codes_json", codes_json),
    ("ogg", ogg),
    ("ws_messages", ws_messages),
];

/// A configuration file: parsed, validated, and summarised as `check-config` prints it
/// (the checks of the environment it names, files and devices, are not fuzzed).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_toml(text, Path::new("fuzz.toml")) {
        let _ = cfg.summary();
        let _ = cfg.sampling.sampling().validate();
    }
}

/// An MQTT command: the first line is the command name (the topic's last part), the rest
/// the payload, as the MQTT client hands them to [`parse_command`].
pub fn mqtt_command(data: &[u8]) {
    let (name, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let name = String::from_utf8_lossy(name);
    let voices = ["moshiko".to_string(), "moshika".to_string()];
    let _ = parse_command(&name, payload, &voices);
}

/// A codes file, against the sizes of Moshi's Mimi (8 codebooks of 2048 codes).
pub fn codes_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = CodesFile::parse(text, 8, 2048);
    }
}

/// The Ogg reader fed in pieces: the first byte picks the piece length (1..=256), as
/// WebSocket messages cut a stream anywhere.
pub fn ogg(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut r = OggReader::new();
    for piece in rest.chunks(cut as usize + 1) {
        if r.push(piece).is_err() {
            return;
        }
        while r.next_packet().is_some() {}
    }
}

/// A client's messages, each a 2-byte big-endian length then the message, handled as the
/// session does: kinds other than audio discarded, audio through Ogg and Opus into 80 ms
/// frames, the first unusable audio ending the session.
pub fn ws_messages(data: &[u8]) {
    let Ok(mut input) = AudioIn::new() else {
        return;
    };
    let mut frame = vec![0.0f32; FRAME_SAMPLES];
    let mut rest = data;
    while rest.len() >= 2 {
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let msg = &rest[2..(2 + n).min(rest.len())];
        rest = &rest[(2 + n).min(rest.len())..];
        if Kind::of(msg) != Some(Kind::Audio) {
            continue;
        }
        if input.push(&msg[1..]).is_err() {
            return;
        }
        while input.next_frame(&mut frame) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(target: &str) -> Vec<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds")
            .join(target);
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Every committed seed (crashes found once among them) through its target.
    #[test]
    fn the_seed_corpora_replay() {
        for (target, f) in TARGETS {
            let s = seeds(target);
            assert!(s.len() >= 3, "{target}: {} seeds", s.len());
            for p in s {
                eprintln!("{target}: {}", p.display());
                f(&std::fs::read(&p).unwrap());
            }
        }
    }

    /// The seeds mean what they say: the valid ones are read.
    #[test]
    fn valid_seeds_are_accepted() {
        let read = |t: &str, n: &str| {
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../fuzz/seeds")
                    .join(t)
                    .join(n),
            )
            .unwrap()
        };
        let example = read("config", "example.toml");
        Config::from_toml(std::str::from_utf8(&example).unwrap(), Path::new("x")).unwrap();
        let codes = read("codes_json", "valid.json");
        CodesFile::parse(std::str::from_utf8(&codes).unwrap(), 8, 2048).unwrap();
        let ws = read("ws_messages", "session.bin");
        let mut input = AudioIn::new().unwrap();
        let (mut rest, mut frames) = (&ws[..], 0);
        let mut frame = vec![0.0f32; FRAME_SAMPLES];
        while rest.len() >= 2 {
            let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            if Kind::of(&rest[2..2 + n]) == Some(Kind::Audio) {
                input.push(&rest[3..2 + n]).unwrap();
            }
            while input.next_frame(&mut frame) {
                frames += 1;
            }
            rest = &rest[2 + n..];
        }
        assert!(frames >= 4, "{frames} frames from the session seed");
    }

    /// Writes the Ogg and client-message seeds from the daemon's own Ogg/Opus writer:
    /// `cargo test --release -p moshid --bin moshid write_web_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_web_seeds() {
        use crate::web::protocol::message;
        use crate::web::stream::AudioOut;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let mut out = AudioOut::new().unwrap();
        let mut pages = Vec::new();
        let mut stream = Vec::new();
        for i in 0..6 {
            let f: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|t| 0.3 * ((t + i * FRAME_SAMPLES) as f32 * 0.02).sin())
                .collect();
            let mut b = Vec::new();
            out.frame(&f, &mut b).unwrap();
            stream.extend_from_slice(&b);
            pages.push(b);
        }
        std::fs::create_dir_all(dir.join("ogg")).unwrap();
        std::fs::create_dir_all(dir.join("ws_messages")).unwrap();
        // Piece length 64 (first byte 63), then the stream; junk before it; cut short.
        let with = |cut: u8, body: &[u8]| [&[cut][..], body].concat();
        std::fs::write(dir.join("ogg/stream.ogg"), with(63, &stream)).unwrap();
        let junk = [&b"not ogg at all"[..], &stream].concat();
        std::fs::write(dir.join("ogg/junk-first.ogg"), with(255, &junk)).unwrap();
        std::fs::write(
            dir.join("ogg/cut-short.ogg"),
            with(0, &stream[..stream.len() / 2]),
        )
        .unwrap();
        let framed = |msgs: &[Vec<u8>]| {
            let mut v = Vec::new();
            for m in msgs {
                v.extend_from_slice(&(m.len() as u16).to_be_bytes());
                v.extend_from_slice(m);
            }
            v
        };
        let mut session: Vec<Vec<u8>> = vec![message(Kind::Control, &[0])];
        session.extend(pages.iter().map(|p| message(Kind::Audio, p)));
        std::fs::write(dir.join("ws_messages/session.bin"), framed(&session)).unwrap();
        let mixed = vec![
            message(Kind::Handshake, &[0, 0, 0, 0, 0, 0, 0, 0]),
            message(Kind::Text, "hello".as_bytes()),
            vec![9, 1, 2, 3],
            message(Kind::Audio, &pages[0]),
            message(Kind::Metadata, b"{}"),
            message(Kind::Audio, &pages[1]),
        ];
        std::fs::write(dir.join("ws_messages/mixed-kinds.bin"), framed(&mixed)).unwrap();
        let bad = vec![
            message(Kind::Audio, &pages[0]),
            message(Kind::Audio, b"OggS\0junk"),
        ];
        std::fs::write(dir.join("ws_messages/bad-audio.bin"), framed(&bad)).unwrap();
    }
}
