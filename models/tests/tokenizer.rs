//! The SentencePiece reader against decodes recorded from the `sentencepiece` package
//! (model trained by tests/fixtures/gen_lm.py, with byte fallback and Moshi's special ids).

use std::path::Path;

use moshid_models::tokenizer::TextTokenizer;

fn load() -> (TextTokenizer, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm");
    let tok = TextTokenizer::from_file(&dir.join("spm.model")).unwrap();
    let exp =
        serde_json::from_str(&std::fs::read_to_string(dir.join("spm_expected.json")).unwrap())
            .unwrap();
    (tok, exp)
}

fn cases(exp: &serde_json::Value) -> Vec<(Vec<u32>, String, Vec<String>)> {
    exp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                serde_json::from_value(c["ids"].clone()).unwrap(),
                c["decoded"].as_str().unwrap().to_string(),
                serde_json::from_value(c["pieces"].clone()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn pieces_and_decodes_match_sentencepiece() {
    let (tok, exp) = load();
    assert_eq!(tok.vocab_size() as u64, exp["vocab_size"].as_u64().unwrap());
    for (ids, decoded, pieces) in cases(&exp) {
        for (id, p) in ids.iter().zip(&pieces) {
            assert_eq!(tok.piece(*id), Some(p.as_str()));
        }
        assert_eq!(tok.decode(&ids), decoded);
    }
}

#[test]
fn streaming_with_moshi_padding_gives_the_same_words() {
    let (tok, exp) = load();
    for (ids, decoded, _) in cases(&exp) {
        // Moshi's text stream: padding (3) and end-of-padding (0) between the word pieces.
        let mut stream = tok.stream();
        let mut out = String::new();
        let mut emitted = 0;
        for &id in &ids {
            stream.push(3, &mut out);
            stream.push(0, &mut out);
            if stream.push(id, &mut out) {
                emitted += 1;
            }
            // Text only ever grows by whole characters.
            assert!(out.is_char_boundary(out.len()));
        }
        stream.finish(&mut out);
        assert_eq!(out, decoded);
        assert!(emitted > 1, "text should arrive piece by piece");
    }
}

#[test]
fn byte_pieces_wait_for_a_whole_character() {
    let (tok, exp) = load();
    let (ids, _, pieces) = cases(&exp)
        .into_iter()
        .find(|c| c.1.contains('😀'))
        .unwrap();
    let first_byte = pieces.iter().position(|p| p == "<0xF0>").unwrap();
    let mut stream = tok.stream();
    let mut out = String::new();
    for &id in &ids[..first_byte] {
        stream.push(id, &mut out);
    }
    let before = out.clone();
    for &id in &ids[first_byte..first_byte + 3] {
        assert!(
            !stream.push(id, &mut out),
            "3 of 4 bytes of an emoji are not text yet"
        );
    }
    assert_eq!(out, before);
    assert!(stream.push(ids[first_byte + 3], &mut out));
    assert!(out.ends_with('😀'));
}

#[test]
fn garbage_is_refused_with_the_path() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm");
    let err = TextTokenizer::from_file(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("SentencePiece"),
        "{err}"
    );
}
