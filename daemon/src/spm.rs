//! Reads the piece table (id -> piece) out of a SentencePiece `.model` file, which is all
//! the daemon needs to turn Moshi's text tokens into words. The file is a protobuf
//! `ModelProto` whose field 1 repeats `SentencePiece { piece = 1; score = 2; type = 3 }`.

/// Errors reading a `.model` file.
#[derive(Debug, thiserror::Error)]
#[error("malformed SentencePiece model at byte {0}")]
pub struct SpmError(usize);

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, SpmError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or(SpmError(self.pos))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SpmError(self.pos))
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], SpmError> {
        let end = self.pos.checked_add(n).ok_or(SpmError(self.pos))?;
        let s = self.b.get(self.pos..end).ok_or(SpmError(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    /// Skips a field of `wire` type; returns the payload for length-delimited ones.
    fn field(&mut self, wire: u64) -> Result<Option<&[u8]>, SpmError> {
        match wire {
            0 => self.varint().map(|_| None),
            1 => self.bytes(8).map(|_| None),
            2 => {
                let n = self.varint()? as usize;
                self.bytes(n).map(Some)
            }
            5 => self.bytes(4).map(|_| None),
            _ => Err(SpmError(self.pos)),
        }
    }
}

/// The pieces in id order.
pub fn pieces(model: &[u8]) -> Result<Vec<String>, SpmError> {
    let mut r = Reader { b: model, pos: 0 };
    let mut out = Vec::new();
    while r.pos < model.len() {
        let key = r.varint()?;
        let payload = r.field(key & 7)?;
        if key >> 3 != 1 {
            continue;
        }
        let Some(sp) = payload else {
            return Err(SpmError(r.pos));
        };
        let mut inner = Reader { b: sp, pos: 0 };
        let mut piece = String::new();
        while inner.pos < sp.len() {
            let k = inner.varint()?;
            let p = inner.field(k & 7)?;
            if k >> 3 == 1 {
                piece = String::from_utf8_lossy(p.unwrap_or_default()).into_owned();
            }
        }
        out.push(piece);
    }
    if out.is_empty() {
        return Err(SpmError(0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_model() {
        // A real SentencePiece model trained by the LM fixtures (320 pieces) and the
        // reference's tokenisation of known sentences.
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/lm");
        let model = std::fs::read(root.join("spm.model")).expect("fixture spm.model");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("spm_expected.json")).unwrap())
                .unwrap();
        let p = pieces(&model).unwrap();
        assert_eq!(p.len() as u64, expected["vocab_size"].as_u64().unwrap());
        for case in expected["cases"].as_array().unwrap() {
            let ids = case["ids"].as_array().unwrap();
            let want = case["pieces"].as_array().unwrap();
            for (id, piece) in ids.iter().zip(want) {
                assert_eq!(p[id.as_u64().unwrap() as usize], piece.as_str().unwrap());
            }
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(pieces(&[0xff, 0xff, 0xff]).is_err());
        assert!(pieces(&[]).is_err());
    }
}
