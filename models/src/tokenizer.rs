//! Moshi's text tokens -> words, from a SentencePiece `.model` file.
//!
//! Decoding needs only the piece table, so the model's protobuf is read directly (a few
//! dozen lines) rather than through a C++ binding that would need cmake and a compiler here.

use std::path::{Path, PathBuf};

/// Errors from reading a tokenizer model.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not a `source`, so that it is printed once).
        error: std::io::Error,
    },
    /// The file is not a SentencePiece model.
    #[error("{path}: not a SentencePiece model ({what}); pass tokenizer_spm_32k_3.model from the Moshi repository")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Piece kinds, as in SentencePiece's `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Unknown,
    Control,
    Byte(u8),
}

/// A SentencePiece vocabulary for decoding Moshi's text stream.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    pieces: Vec<(String, Kind)>,
    /// Unigram log-probabilities (encoding only; 0 for a plain piece table).
    scores: Vec<f32>,
}

/// Token ids Moshi's text stream uses for "no word here": end of padding (0) and padding (3).
pub const SKIPPED_IDS: [u32; 2] = [0, 3];

impl TextTokenizer {
    /// Reads a SentencePiece `.model` file.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|error| TokenizerError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_bytes(&bytes).map_err(|what| TokenizerError::Format {
            path: path.to_path_buf(),
            what,
        })
    }

    /// Parses the bytes of a SentencePiece model (`ModelProto`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut scores = Vec::new();
        let mut r = Reader { b: bytes, i: 0 };
        while !r.done() {
            let (field, wire) = r.key()?;
            if field == 1 && wire == 2 {
                let msg = r.bytes()?;
                let (piece, kind, score) = parse_piece(msg)?;
                pieces.push((piece, kind));
                scores.push(score);
            } else {
                r.skip(wire)?;
            }
        }
        if pieces.is_empty() {
            return Err("no pieces".into());
        }
        Ok(Self { pieces, scores })
    }

    /// Builds a vocabulary from a plain piece table (one piece per token id): `<0xNN>` is a
    /// byte piece, any other `<...>` a control piece. For tables that are not SentencePiece
    /// files, such as the offline demo's.
    pub fn from_pieces(pieces: Vec<String>) -> Self {
        let pieces = pieces
            .into_iter()
            .map(|p| {
                let byte = p
                    .strip_prefix("<0x")
                    .and_then(|s| s.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let kind = match byte {
                    Some(b) => Kind::Byte(b),
                    None if p.starts_with('<') && p.ends_with('>') => Kind::Control,
                    None => Kind::Normal,
                };
                (p, kind)
            })
            .collect::<Vec<_>>();
        let scores = vec![0.0; pieces.len()];
        Self { pieces, scores }
    }

    /// Number of pieces.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The raw piece of `id` (with `▁` for spaces), if it exists.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|(p, _)| p.as_str())
    }

    /// Encodes text as SentencePiece's unigram model does: whitespace runs become one `▁`, a
    /// `▁` goes in front, then the segmentation with the highest total score; a character no
    /// piece covers becomes its UTF-8 byte pieces (`<0xNN>`) when the model has them, else the
    /// unknown piece. Unicode NFKC normalisation is not applied (text in NFKC form, such as
    /// plain ASCII, encodes as SentencePiece encodes it).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let norm: String = std::iter::once("")
            .chain(text.split_whitespace())
            .collect::<Vec<_>>()
            .join("\u{2581}");
        if norm.is_empty() {
            return Vec::new();
        }
        let index = self.piece_index();
        let chars: Vec<(usize, char)> = norm.char_indices().collect();
        let n = chars.len();
        let at = |i: usize| chars.get(i).map_or(norm.len(), |c| c.0);
        let longest = index.keys().map(|p| p.chars().count()).max().unwrap_or(1);
        let unk_score = self.scores.iter().copied().fold(0f32, f32::min) - 10.0;
        // best[i]: (score, start of the last piece, its id or None for an unknown char).
        let mut best: Vec<(f32, usize, Option<u32>)> = vec![(f32::NEG_INFINITY, 0, None); n + 1];
        best[0].0 = 0.0;
        for end in 1..=n {
            for len in 1..=longest.min(end) {
                let start = end - len;
                let (base, piece) = (best[start].0, &norm[at(start)..at(end)]);
                let found = index
                    .get(piece)
                    .map(|&id| (self.scores[id as usize], Some(id)));
                let Some((score, id)) = found.or((len == 1).then_some((unk_score, None))) else {
                    continue;
                };
                if base + score > best[end].0 {
                    best[end] = (base + score, start, id);
                }
            }
        }
        let mut out = Vec::new();
        let mut end = n;
        while end > 0 {
            let (_, start, id) = best[end];
            match id {
                Some(id) => out.push(id),
                None => out.extend(self.unknown_ids(&norm[at(start)..at(end)]).rev()),
            }
            end = start;
        }
        out.reverse();
        out
    }

    /// Piece -> id for the pieces encoding may produce (normal and user-defined ones).
    fn piece_index(&self) -> std::collections::HashMap<&str, u32> {
        let normal = self.pieces.iter().enumerate();
        normal
            .filter(|(_, (_, k))| *k == Kind::Normal)
            .map(|(i, (p, _))| (p.as_str(), i as u32))
            .collect()
    }

    /// Ids for a character no piece covers: its byte pieces, or the unknown piece.
    fn unknown_ids(&self, ch: &str) -> std::vec::IntoIter<u32> {
        let byte_id = |b: u8| {
            self.pieces
                .iter()
                .position(|(_, k)| *k == Kind::Byte(b))
                .map(|i| i as u32)
        };
        let bytes: Option<Vec<u32>> = ch.bytes().map(byte_id).collect();
        let unk = self.pieces.iter().position(|(_, k)| *k == Kind::Unknown);
        bytes
            .unwrap_or_else(|| vec![unk.unwrap_or(0) as u32])
            .into_iter()
    }

    /// Decodes a whole sequence (padding and control tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut d = self.stream();
        let mut out = String::new();
        for &id in ids {
            d.push(id, &mut out);
        }
        d.finish(&mut out);
        out
    }

    /// A streaming decoder: push tokens as Moshi produces them, get text as soon as it is
    /// known (byte pieces are held until they form a whole UTF-8 character).
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tok: self,
            state: StreamState::default(),
        }
    }

    /// Streaming decode with caller-owned state (for owners that keep the tokenizer and the
    /// state side by side): appends the text of `id` to `out`, as [`TextStream::push`].
    pub fn push(&self, state: &mut StreamState, id: u32, out: &mut String) -> bool {
        state.push(self, id, out)
    }

    /// Flushes what `state` still holds, as [`TextStream::finish`].
    pub fn finish(&self, state: &mut StreamState, out: &mut String) {
        state.flush_invalid(out)
    }
}

/// A streaming decoder borrowing its tokenizer: see [`TextTokenizer::stream`].
#[derive(Debug)]
pub struct TextStream<'a> {
    tok: &'a TextTokenizer,
    state: StreamState,
}

impl TextStream<'_> {
    /// Appends the text of token `id` to `out`; returns whether anything was appended.
    /// Padding ids (0, 3), control and unknown-range ids add nothing.
    pub fn push(&mut self, id: u32, out: &mut String) -> bool {
        self.state.push(self.tok, id, out)
    }

    /// Flushes bytes left pending at the end of the stream.
    pub fn finish(&mut self, out: &mut String) {
        self.state.flush_invalid(out);
    }
}

/// What a streaming decode carries between tokens: bytes of an incomplete UTF-8 character
/// and whether any text was produced yet.
#[derive(Debug, Default)]
pub struct StreamState {
    bytes: Vec<u8>,
    started: bool,
}

impl StreamState {
    fn push(&mut self, tok: &TextTokenizer, id: u32, out: &mut String) -> bool {
        let before = out.len();
        if SKIPPED_IDS.contains(&id) {
            return false;
        }
        let Some((piece, kind)) = tok.pieces.get(id as usize) else {
            return false;
        };
        match *kind {
            Kind::Control => {}
            Kind::Byte(b) => {
                self.bytes.push(b);
                match std::str::from_utf8(&self.bytes) {
                    Ok(s) => {
                        self.emit(s.to_owned().as_str(), out);
                        self.bytes.clear();
                    }
                    Err(e) if e.error_len().is_some() || self.bytes.len() >= 4 => {
                        self.flush_invalid(out)
                    }
                    Err(_) => {} // an incomplete character: wait for its next byte
                }
            }
            Kind::Unknown => {
                self.flush_invalid(out);
                self.emit(" \u{2047} ", out);
            }
            Kind::Normal => {
                self.flush_invalid(out);
                let text = piece.replace('\u{2581}', " ");
                self.emit(&text, out);
            }
        }
        out.len() > before
    }

    fn flush_invalid(&mut self, out: &mut String) {
        if !self.bytes.is_empty() {
            let s = String::from_utf8_lossy(&self.bytes).into_owned();
            self.bytes.clear();
            self.emit(&s, out);
        }
    }

    fn emit(&mut self, text: &str, out: &mut String) {
        // Like SentencePiece's decode, the stream's very first word loses its leading space.
        let text = if self.started {
            text
        } else {
            text.strip_prefix(' ').unwrap_or(text)
        };
        if !text.is_empty() {
            self.started = true;
            out.push_str(text);
        }
    }
}

fn parse_piece(msg: &[u8]) -> Result<(String, Kind, f32), String> {
    let mut r = Reader { b: msg, i: 0 };
    let mut piece = String::new();
    let mut ty = 1u64;
    let mut score = 0f32;
    while !r.done() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (1, 2) => piece = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (2, 5) => score = r.f32()?,
            (3, 0) => ty = r.varint()?,
            _ => r.skip(wire)?,
        }
    }
    let kind = match ty {
        2 => Kind::Unknown,
        3 | 5 => Kind::Control,
        6 => {
            let hex = piece
                .strip_prefix("<0x")
                .and_then(|s| s.strip_suffix('>'))
                .ok_or_else(|| format!("byte piece `{piece}` is not <0xNN>"))?;
            Kind::Byte(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("byte piece `{piece}` is not <0xNN>"))?,
            )
        }
        _ => Kind::Normal,
    };
    Ok((piece, kind, score))
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i).ok_or("truncated varint")?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn f32(&mut self) -> Result<f32, String> {
        let b = self.b.get(self.i..self.i + 4).ok_or("truncated float")?;
        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.i += 4;
        Ok(v)
    }
    fn key(&mut self) -> Result<(u64, u64), String> {
        let k = self.varint()?;
        Ok((k >> 3, k & 7))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
        let end = self
            .i
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("truncated field")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            w => Err(format!("unsupported wire type {w}")),
        }
    }
    fn advance(&mut self, n: usize) -> Result<(), String> {
        if self.i + n > self.b.len() {
            return Err("truncated field".into());
        }
        self.i += n;
        Ok(())
    }
}
