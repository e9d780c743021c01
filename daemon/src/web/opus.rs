//! Opus through libopus (the `opus` crate: thin bindings over `audiopus_sys`, which links the
//! system libopus found by pkg-config; Debian's `libopus-dev`). Kyutai's own server uses the
//! same crate. Always 24 kHz mono on our side: libopus decodes any stream (48 kHz input,
//! stereo) to that, so the client's OpusHead need not be trusted.

use moshid_hal::MODEL_RATE;

/// Samples of one packet we send: 40 ms at 24 kHz, as Kyutai's server does.
pub const PACKET_SAMPLES: usize = 960;
/// Longest Opus packet (120 ms) at 24 kHz.
pub const MAX_PACKET_SAMPLES: usize = 2880;
/// Pre-skip written in our OpusHead (libopus' look-ahead at 48 kHz; informative).
const PRE_SKIP: u16 = 312;

/// An Opus failure.
#[derive(Debug, thiserror::Error)]
#[error("Opus: {0}")]
pub struct OpusError(String);

impl From<opus::Error> for OpusError {
    fn from(e: opus::Error) -> Self {
        OpusError(e.to_string())
    }
}

/// Decodes a client's packets to 24 kHz mono.
pub struct Decoder {
    inner: opus::Decoder,
}

impl Decoder {
    /// A decoder at 24 kHz mono.
    pub fn new() -> Result<Decoder, OpusError> {
        Ok(Decoder {
            inner: opus::Decoder::new(MODEL_RATE, opus::Channels::Mono)?,
        })
    }

    /// Decodes one packet, appending its samples to `out`; returns how many.
    pub fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<usize, OpusError> {
        let n = opus::packet::get_nb_samples(packet, MODEL_RATE)?;
        if n == 0 || n > MAX_PACKET_SAMPLES {
            return Err(OpusError(format!(
                "a packet of {n} samples (at most 120 ms)"
            )));
        }
        let at = out.len();
        out.resize(at + n, 0.0);
        let got = self.inner.decode_float(packet, &mut out[at..], false)?;
        out.truncate(at + got);
        Ok(got)
    }
}

/// Encodes 24 kHz mono into 40 ms packets.
pub struct Encoder {
    inner: opus::Encoder,
}

impl Encoder {
    /// An encoder at 24 kHz mono, application VOIP (as Kyutai's server).
    pub fn new() -> Result<Encoder, OpusError> {
        Ok(Encoder {
            inner: opus::Encoder::new(MODEL_RATE, opus::Channels::Mono, opus::Application::Voip)?,
        })
    }

    /// Encodes one packet of `pcm` (2.5 to 120 ms, an Opus frame size) into `out`.
    pub fn encode(&mut self, pcm: &[f32], out: &mut Vec<u8>) -> Result<(), OpusError> {
        out.resize(4000, 0);
        let n = self.inner.encode_float(pcm, out)?;
        out.truncate(n);
        Ok(())
    }
}

/// The `OpusHead` packet: version 1, one channel, the given input rate, gain 0, mapping 0.
pub fn opus_head(input_rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1);
    h.push(1);
    h.extend_from_slice(&PRE_SKIP.to_le_bytes());
    h.extend_from_slice(&input_rate.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

/// The `OpusTags` packet: a vendor string and no comments.
pub fn opus_tags(vendor: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(16 + vendor.len());
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// True for the two header packets, which carry no audio.
pub fn is_header(packet: &[u8]) -> bool {
    packet.starts_with(b"OpusHead") || packet.starts_with(b"OpusTags")
}
