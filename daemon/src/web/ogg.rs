//! Ogg pages for `/api/chat` audio: a lenient streaming reader and a small writer.
//!
//! Written here rather than taken from the `ogg` crate: that crate's reader wants a
//! `Read + Seek` stream and treats a bad CRC as a hard error, while Kyutai's clients need a
//! reader that is fed WebSocket messages one at a time, resynchronises on `OggS` after junk,
//! and tolerates the page writers found in the wild (PROTOCOL.md, "What clients send"). The
//! `ogg` crate is used by the tests as an independent reference for both directions.

/// Bytes of a page header before the lacing table.
const HEADER: usize = 27;
/// Page flag: the first packet continues one from the previous page.
const FLAG_CONTINUED: u8 = 0x01;
/// Page flag: first page of a logical stream.
pub const FLAG_BOS: u8 = 0x02;
/// Page flag: last page of a logical stream.
pub const FLAG_EOS: u8 = 0x04;
/// Largest packet the reader reassembles (an 120 ms Opus packet is under 8 KiB).
pub const MAX_PACKET: usize = 64 * 1024;
/// Bytes of junk tolerated without a usable page before the stream counts as garbage.
pub const MAX_JUNK: usize = 64 * 1024;

/// Why a stream cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OggError {
    /// A packet grew beyond [`MAX_PACKET`].
    #[error("an Ogg packet is larger than {MAX_PACKET} bytes")]
    PacketTooLarge,
    /// Too much data without any usable page.
    #[error("no usable Ogg page in {0} bytes of audio messages")]
    Garbage(usize),
    /// A well-formed page (valid CRC) of an Ogg version this reader does not know.
    #[error("Ogg page version {0} is not supported")]
    Version(u8),
}

/// What the reader has seen and forgiven, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReaderStats {
    /// Pages parsed.
    pub pages: u64,
    /// Bytes skipped while looking for `OggS`.
    pub skipped_bytes: u64,
    /// Pages accepted although their CRC did not match.
    pub bad_crc: u64,
    /// Pages whose single lacing value understated the body (a writer bug), repaired.
    pub repaired: u64,
    /// Partial packets thrown away (a continuation that never came, or came without a start).
    pub dropped_partial: u64,
}

/// Streaming Ogg reader: push WebSocket payloads, pull whole packets.
#[derive(Debug, Default)]
pub struct OggReader {
    buf: Vec<u8>,
    /// Start of unparsed data in `buf`.
    pos: usize,
    /// A packet continued across pages.
    partial: Vec<u8>,
    has_partial: bool,
    packets: std::collections::VecDeque<Vec<u8>>,
    junk: usize,
    stats: ReaderStats,
    /// What is known about the page at `pos` while it waits for more data.
    wait: Wait,
}

/// What the reader learnt about the page at `pos` and the captures after it while that page
/// waits for more data, so that each message costs what is new in it: a page arriving a byte
/// per message would otherwise cost a CRC and a scan of the whole buffer per byte (found by
/// fuzzing). Offsets are from the page's start; the memo is dropped when `pos` moves.
#[derive(Debug, Default)]
struct Wait {
    /// The page's CRC verdict, once the page is complete (its bytes no longer change).
    crc_ok: Option<bool>,
    /// Where the search for the capture after a page with a bad CRC resumes.
    next_from: usize,
    /// Where the search for later pages resumes ([`OggReader::later_page`]).
    later_from: usize,
    /// Later captures whose page was incomplete: (buffer length to look again at, capture),
    /// least length first.
    pending: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>>,
}

/// CRC-32 of Ogg (polynomial 0x04c11db7, not reflected, initial value 0).
pub fn crc32(data: &[u8]) -> u32 {
    crc_update(0, data)
}

fn crc_update(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
            }
            *e = r;
        }
        t
    });
    data.iter().fold(crc, |c, &b| {
        (c << 8) ^ table[((c >> 24) as u8 ^ b) as usize]
    })
}

/// CRC of the page in `page`, its CRC field (bytes 22..26) taken as zero.
fn page_crc(page: &[u8]) -> u32 {
    let c = crc_update(crc_update(0, &page[..22]), &[0; 4]);
    crc_update(c, &page[26..])
}

fn find_capture(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?
        .windows(4)
        .position(|w| w == b"OggS")
        .map(|p| p + from)
}

/// One page located in the buffer: where its body lies and its lacing table.
struct Located {
    flags: u8,
    crc_ok: bool,
    /// The body ran past the declared lacing (see [`OggReader::locate`]).
    repaired: bool,
    lacing_start: usize,
    n_seg: usize,
    body: std::ops::Range<usize>,
    end: usize,
}

enum Found {
    Page(Located),
    /// A well-formed page (valid CRC) of another Ogg version.
    Version(u8),
    NeedMore,
    /// Not a page after all: skip this many bytes and look again.
    Skip(usize),
}

impl OggReader {
    /// A reader with nothing buffered.
    pub fn new() -> OggReader {
        OggReader::default()
    }

    /// What the reader has forgiven so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Adds the payload of one audio message and parses every whole page in it.
    pub fn push(&mut self, data: &[u8]) -> Result<(), OggError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        loop {
            let Some(start) = find_capture(&self.buf, self.pos) else {
                // Keep a possible `OggS` prefix split across messages.
                let keep = self.buf.len().saturating_sub(self.pos).min(3);
                self.skip(self.buf.len() - self.pos - keep)?;
                return Ok(());
            };
            let gap = start - self.pos;
            // The memo is for the page at `pos`: kept only while that page is still waiting.
            let mut wait = std::mem::take(&mut self.wait);
            if gap > 0 {
                wait = Wait::default();
            }
            self.skip(gap)?;
            match self.locate(start, &mut wait) {
                Found::NeedMore => match self.later_page(start, &mut wait) {
                    // Not a page still arriving but a broken one with a good page after.
                    Some(next) => self.skip(next - start)?,
                    None => {
                        self.wait = wait;
                        return Ok(());
                    }
                },
                Found::Skip(n) => self.skip(n)?,
                Found::Version(v) => return Err(OggError::Version(v)),
                Found::Page(p) => {
                    self.take_page(&p)?;
                    self.pos = p.end;
                    self.junk = 0;
                    self.stats.pages += 1;
                }
            }
        }
    }

    /// Where a complete page with a valid CRC starts after `start`, if one does (the first
    /// one). Looks only at what `wait` has not seen: captures that were incomplete and are
    /// now long enough, then the captures in the new data.
    fn later_page(&self, start: usize, wait: &mut Wait) -> Option<usize> {
        let len = self.buf.len();
        let mut first = None;
        while let Some(&std::cmp::Reverse((need, q))) = wait.pending.peek() {
            if start + need > len {
                break;
            }
            wait.pending.pop();
            match self.valid_page_at(start + q) {
                Ok(true) => first = Some(first.map_or(q, |f: usize| f.min(q))),
                Ok(false) => {}
                Err(need) => wait.pending.push(std::cmp::Reverse((need - start, q))),
            }
        }
        if let Some(q) = first {
            return Some(start + q); // pending captures lie before every new one
        }
        let mut at = start + wait.later_from.max(4);
        while let Some(q) = find_capture(&self.buf, at) {
            match self.valid_page_at(q) {
                Ok(true) => return Some(q),
                Ok(false) => {}
                Err(need) => wait
                    .pending
                    .push(std::cmp::Reverse((need - start, q - start))),
            }
            at = q + 4;
        }
        // A capture starting before the last 3 bytes would have been found.
        wait.later_from = len.saturating_sub(3).max(at) - start;
        None
    }

    /// Whether a complete page of version 0 with a valid CRC starts at `q`; `Err(n)`: the
    /// page is incomplete, look again once the buffer holds `n` bytes.
    fn valid_page_at(&self, q: usize) -> Result<bool, usize> {
        let b = &self.buf[q..];
        if b.len() < HEADER {
            return Err(q + HEADER);
        }
        let n_seg = b[26] as usize;
        if b.len() < HEADER + n_seg {
            return Err(q + HEADER + n_seg);
        }
        let end = HEADER
            + n_seg
            + b[HEADER..HEADER + n_seg]
                .iter()
                .map(|&v| v as usize)
                .sum::<usize>();
        if b.len() < end {
            return Err(q + end);
        }
        let stored = u32::from_le_bytes([b[22], b[23], b[24], b[25]]);
        Ok(b[4] == 0 && page_crc(&b[..end]) == stored)
    }

    /// The next whole packet (Opus headers included; the caller tells them apart).
    pub fn next_packet(&mut self) -> Option<Vec<u8>> {
        self.packets.pop_front()
    }

    fn skip(&mut self, n: usize) -> Result<(), OggError> {
        self.pos += n;
        self.junk += n;
        self.stats.skipped_bytes += n as u64;
        if self.junk > MAX_JUNK {
            return Err(OggError::Garbage(self.junk));
        }
        Ok(())
    }

    /// Reads the page that starts at `start` (an `OggS`), checking its CRC, and repairs the
    /// one writer bug known in the wild: a single lacing value `min(len, 255)` for a packet
    /// of 255 bytes or more, whose real body runs up to the next page.
    fn locate(&self, start: usize, wait: &mut Wait) -> Found {
        let b = &self.buf[start..];
        if b.len() < HEADER {
            return Found::NeedMore;
        }
        let n_seg = b[26] as usize;
        let declared: usize = b[HEADER..].iter().take(n_seg).map(|&v| v as usize).sum();
        let body_start = HEADER + n_seg;
        if b.len() < body_start + declared {
            return Found::NeedMore;
        }
        let stored = u32::from_le_bytes([b[22], b[23], b[24], b[25]]);
        let crc_ok = *wait
            .crc_ok
            .get_or_insert_with(|| page_crc(&b[..body_start + declared]) == stored);
        if b[4] != 0 {
            // Version byte: a real page of another version is an error, junk is skipped.
            return if crc_ok {
                Found::Version(b[4])
            } else {
                Found::Skip(4)
            };
        }
        let mut end = body_start + declared;
        let mut repaired = false;
        if !crc_ok {
            let found = find_capture(b, wait.next_from.max(4));
            if found.is_none() {
                wait.next_from = b.len().saturating_sub(3);
            }
            let next = found.unwrap_or(b.len());
            let open_ended = n_seg > 0 && b[HEADER + n_seg - 1] == 255;
            if open_ended && found.is_none() && b.len() < end + MAX_PACKET {
                // The repaired body may still be arriving: wait for the next page.
                return Found::NeedMore;
            }
            if open_ended && next > end {
                if page_crc(&b[..next]) == stored {
                    end = next;
                    repaired = true;
                }
            } else if next < end {
                // A truncated page with the next one inside its declared body: drop it,
                // keep the next.
                return Found::Skip(4);
            }
        }
        Found::Page(Located {
            flags: b[5],
            crc_ok,
            repaired,
            lacing_start: start + HEADER,
            n_seg,
            body: start + body_start..start + end,
            end: start + end,
        })
    }

    /// Splits a located page into packets (reassembling across pages).
    fn take_page(&mut self, p: &Located) -> Result<(), OggError> {
        let repaired = p.repaired;
        if repaired {
            self.stats.repaired += 1;
        } else if !p.crc_ok {
            // No known decoder checks CRCs and some writers get them wrong: count, use.
            self.stats.bad_crc += 1;
        }
        let continued = p.flags & FLAG_CONTINUED != 0;
        if self.has_partial && !continued {
            self.stats.dropped_partial += 1;
            self.clear_partial();
        }
        // A continuation whose start we never saw: skip its first packet's segments.
        let mut skipping = continued && !self.has_partial;
        let mut at = p.body.start;
        for i in 0..p.n_seg {
            let lace = self.buf[p.lacing_start + i] as usize;
            let last = i + 1 == p.n_seg;
            // The repaired page's one segment is its whole body.
            let len = if repaired && last {
                p.body.end - at
            } else {
                lace
            };
            let seg = at..(at + len).min(p.body.end);
            at = seg.end;
            if !skipping {
                if self.partial.len() + seg.len() > MAX_PACKET {
                    self.clear_partial();
                    return Err(OggError::PacketTooLarge);
                }
                self.partial.extend_from_slice(&self.buf[seg]);
                self.has_partial = true;
            }
            if lace < 255 || (repaired && last) {
                if skipping {
                    self.stats.dropped_partial += 1;
                    skipping = false;
                } else {
                    self.packets.push_back(std::mem::take(&mut self.partial));
                    self.has_partial = false;
                }
            }
        }
        Ok(())
    }

    fn clear_partial(&mut self) {
        self.partial.clear();
        self.has_partial = false;
    }
}

/// Writes one logical Ogg stream, one packet per page (what every client reads).
#[derive(Debug)]
pub struct OggWriter {
    serial: u32,
    sequence: u32,
    granule: u64,
}

impl OggWriter {
    /// A stream with this serial number.
    pub fn new(serial: u32) -> OggWriter {
        OggWriter {
            serial,
            sequence: 0,
            granule: 0,
        }
    }

    /// Appends one page holding `packet` to `out`. `granule_add` is the packet's duration
    /// in the granule unit (48 kHz samples for Opus); `flags` may add BOS or EOS.
    pub fn page(&mut self, packet: &[u8], granule_add: u64, flags: u8, out: &mut Vec<u8>) {
        self.granule += granule_add;
        let start = out.len();
        out.extend_from_slice(b"OggS");
        out.push(0);
        out.push(flags & (FLAG_BOS | FLAG_EOS));
        out.extend_from_slice(&self.granule.to_le_bytes());
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        // Lacing: 255s then the remainder (a zero closes a packet of a multiple of 255).
        let n_seg = packet.len() / 255 + 1;
        debug_assert!(n_seg <= 255, "one page holds packets under 65025 bytes");
        out.push(n_seg as u8);
        out.extend(std::iter::repeat_n(255u8, n_seg - 1));
        out.push((packet.len() % 255) as u8);
        out.extend_from_slice(packet);
        let crc = crc32(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
    }

    /// Pages written so far.
    pub fn pages(&self) -> u32 {
        self.sequence
    }
}

#[cfg(test)]
#[path = "ogg_tests.rs"]
mod tests;
