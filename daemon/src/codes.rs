//! The codes file of `moshid codec encode/decode`: JSON with one inner list of
//! `num_codebooks` Mimi codes per 80 ms frame. Read here, checked against the codec's
//! sizes before any decoding (a fuzz target: daemon/src/fuzz.rs).

use serde::{Deserialize, Serialize};

/// The codes file.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CodesFile {
    /// Codes per frame.
    pub num_codebooks: usize,
    /// One list per frame.
    pub codes: Vec<Vec<u32>>,
}

impl CodesFile {
    /// Parses `text` and checks it fits a Mimi with `n_q` codebooks of `bins` entries;
    /// the message says what is wrong (the caller adds the file name).
    pub fn parse(text: &str, n_q: usize, bins: usize) -> Result<CodesFile, String> {
        let file: CodesFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a codes file ({e}); expected {{\"num_codebooks\": K, \"codes\": [[c_0, ..., c_K-1], ...]}} with codes as non-negative integers"
            )
        })?;
        let k = file.num_codebooks;
        if k == 0 || k > n_q {
            return Err(format!(
                "num_codebooks is {k}, this Mimi has 1..={n_q} codebooks"
            ));
        }
        for (i, f) in file.codes.iter().enumerate() {
            if f.len() != k {
                return Err(format!(
                    "frame {i} has {} codes, num_codebooks says {k}",
                    f.len()
                ));
            }
            if let Some(c) = f.iter().find(|&&c| c as usize >= bins) {
                return Err(format!("frame {i} has code {c}, out of range 0..{bins}"));
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_fits_is_read_and_each_misfit_named() {
        let ok = CodesFile::parse(
            r#"{"num_codebooks": 2, "codes": [[1, 2], [3, 4]]}"#,
            8,
            2048,
        );
        assert_eq!(ok.unwrap().codes, [[1, 2], [3, 4]]);
        for (text, says) in [
            (r#"{"num_codebooks": 0, "codes": []}"#, "num_codebooks is 0"),
            (r#"{"num_codebooks": 9, "codes": []}"#, "1..=8 codebooks"),
            (
                r#"{"num_codebooks": 2, "codes": [[1]]}"#,
                "frame 0 has 1 codes",
            ),
            (
                r#"{"num_codebooks": 1, "codes": [[0], [2048]]}"#,
                "frame 1 has code 2048",
            ),
            (
                r#"{"num_codebooks": 1, "codes": [[-1]]}"#,
                "not a codes file",
            ),
            (
                r#"{"num_codebooks": 1, "codes": [], "x": 1}"#,
                "unknown field",
            ),
        ] {
            let e = CodesFile::parse(text, 8, 2048).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
