//! Audio on the wire for one session: Ogg/Opus messages in -> 80 ms model frames, and model
//! frames -> Ogg/Opus messages out (PROTOCOL.md, "Audio on the wire").

use super::ogg::{OggError, OggReader, OggWriter, FLAG_BOS};
use super::opus::{self, Decoder, Encoder, OpusError, PACKET_SAMPLES};
use moshid_hal::FRAME_SAMPLES;

/// Why a client's audio cannot be used (the session ends with a kind-5 message).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The Ogg framing.
    #[error(transparent)]
    Ogg(#[from] OggError),
    /// An Opus packet.
    #[error(transparent)]
    Opus(#[from] OpusError),
}

/// The client's audio: any mix of 2.5-120 ms packets, cut into 80 ms frames.
pub struct AudioIn {
    reader: OggReader,
    decoder: Decoder,
    pending: Vec<f32>,
    read: usize,
    /// Opus packets decoded.
    pub packets: u64,
}

impl AudioIn {
    /// A fresh stream.
    pub fn new() -> Result<AudioIn, StreamError> {
        Ok(AudioIn {
            reader: OggReader::new(),
            decoder: Decoder::new()?,
            pending: Vec::with_capacity(4 * FRAME_SAMPLES),
            read: 0,
            packets: 0,
        })
    }

    /// Feeds the payload of one audio message (kind byte removed).
    pub fn push(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        self.reader.push(payload)?;
        while let Some(p) = self.reader.next_packet() {
            if opus::is_header(&p) || p.is_empty() {
                continue;
            }
            self.decoder.decode(&p, &mut self.pending)?;
            self.packets += 1;
        }
        Ok(())
    }

    /// The next whole 80 ms frame, copied into `frame`; false when less than one waits.
    pub fn next_frame(&mut self, frame: &mut [f32]) -> bool {
        if self.pending.len() - self.read < FRAME_SAMPLES {
            if self.read > 0 {
                self.pending.drain(..self.read);
                self.read = 0;
            }
            return false;
        }
        frame.copy_from_slice(&self.pending[self.read..self.read + FRAME_SAMPLES]);
        self.read += FRAME_SAMPLES;
        true
    }

    /// Statistics of the Ogg reader.
    pub fn ogg_stats(&self) -> super::ogg::ReaderStats {
        self.reader.stats()
    }
}

/// Moshi's audio: two 40 ms packets per 80 ms frame, one packet per page.
pub struct AudioOut {
    writer: OggWriter,
    encoder: Encoder,
    packet: Vec<u8>,
}

impl AudioOut {
    /// A stream with a random serial number.
    pub fn new() -> Result<AudioOut, StreamError> {
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0x6d6f_7368);
        Ok(AudioOut {
            writer: OggWriter::new(serial),
            encoder: Encoder::new()?,
            packet: Vec::with_capacity(4000),
        })
    }

    /// The two header pages (OpusHead with BOS, then OpusTags), appended to `out`.
    pub fn headers(&mut self, out: &mut Vec<u8>) {
        self.writer
            .page(&opus::opus_head(moshid_hal::MODEL_RATE), 0, FLAG_BOS, out);
        let vendor = concat!("moshid ", env!("CARGO_PKG_VERSION"));
        self.writer.page(&opus::opus_tags(vendor), 0, 0, out);
    }

    /// Encodes one 80 ms frame as pages appended to `out` (the headers first, if not yet).
    pub fn frame(&mut self, frame: &[f32], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.writer.pages() == 0 {
            self.headers(out);
        }
        for chunk in frame.chunks(PACKET_SAMPLES) {
            self.encoder.encode(chunk, &mut self.packet)?;
            // Granule positions count 48 kHz samples.
            self.writer
                .page(&self.packet, 2 * chunk.len() as u64, 0, out);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
