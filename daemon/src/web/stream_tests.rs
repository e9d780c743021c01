//! Opus-in-Ogg both ways with real libopus packets of every size clients send.

use super::*;
use crate::web::ogg::OggWriter;

fn tone(n: usize, freq: f32) -> Vec<f32> {
    (0..n)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * freq * i as f32 / 24_000.0).sin())
        .collect()
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// A client stream: headers, then `packet_samples` packets, `per_page` to a page.
fn client_stream(
    pcm: &[f32],
    packet_samples: usize,
    per_page: usize,
    bitrate: i32,
) -> Vec<Vec<u8>> {
    let mut enc =
        ::opus::Encoder::new(24_000, ::opus::Channels::Mono, ::opus::Application::Audio).unwrap();
    enc.set_bitrate(::opus::Bitrate::Bits(bitrate)).unwrap();
    let mut w = OggWriter::new(42);
    let mut head = Vec::new();
    w.page(
        &crate::web::opus::opus_head(48_000),
        0,
        crate::web::ogg::FLAG_BOS,
        &mut head,
    );
    let mut tags = Vec::new();
    w.page(&crate::web::opus::opus_tags("test"), 0, 0, &mut tags);
    let mut messages = vec![head, tags];
    let packets: Vec<Vec<u8>> = pcm
        .chunks_exact(packet_samples)
        .map(|c| enc.encode_vec_float(c, 4000).unwrap())
        .collect();
    for group in packets.chunks(per_page) {
        // Several packets on one page: build the page by hand (our writer does one).
        let mut body = Vec::new();
        let mut lacing = Vec::new();
        for p in group {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
            body.extend_from_slice(p);
        }
        let mut page = b"OggS\0\0".to_vec();
        page.extend_from_slice(&[0; 8 + 4 + 4 + 4]);
        page.push(lacing.len() as u8);
        page.extend(lacing);
        page.extend(body);
        let crc = crate::web::ogg::crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        messages.push(page);
    }
    messages
}

fn frames_of(messages: &[Vec<u8>]) -> Vec<Vec<f32>> {
    let mut input = AudioIn::new().unwrap();
    let mut frames = Vec::new();
    let mut f = vec![0.0; FRAME_SAMPLES];
    for m in messages {
        input.push(m).unwrap();
        while input.next_frame(&mut f) {
            frames.push(f.clone());
        }
    }
    frames
}

#[test]
fn every_client_packet_size_becomes_80_ms_frames() {
    let pcm = tone(24_000, 300.0); // 1 s = 12.5 frames
    for (ms, per_page) in [(20, 2), (40, 1), (60, 1), (80, 1), (20, 1)] {
        let n = 24 * ms;
        let frames = frames_of(&client_stream(&pcm, n, per_page, 24_000));
        let samples = (24_000 / n) * n;
        assert_eq!(frames.len(), samples / FRAME_SAMPLES, "{ms} ms packets");
        // The tone comes through (after the codec's start-up).
        let level = rms(&frames[frames.len() - 1]);
        assert!((0.15..0.3).contains(&level), "{ms} ms: rms {level}");
    }
}

#[test]
fn long_packets_at_a_high_bitrate_need_lacing_across_255() {
    let pcm = tone(24_000, 500.0);
    let messages = client_stream(&pcm, 1920, 1, 96_000);
    assert!(
        messages[2][26] > 1,
        "a packet over 255 bytes takes several segments"
    );
    assert_eq!(frames_of(&messages).len(), 12);
}

#[test]
fn our_output_decodes_back_to_the_same_sound() {
    let mut out = AudioOut::new().unwrap();
    let pcm = tone(FRAME_SAMPLES * 10, 440.0);
    let mut messages = Vec::new();
    for f in pcm.chunks(FRAME_SAMPLES) {
        let mut m = Vec::new();
        out.frame(f, &mut m).unwrap();
        messages.push(m);
    }
    // First message: the two header pages plus two audio pages; then two pages each.
    let count = |m: &[u8]| m.windows(4).filter(|w| *w == b"OggS").count();
    assert_eq!(count(&messages[0]), 4);
    assert!(messages[1..].iter().all(|m| count(m) == 2));
    let frames = frames_of(&messages);
    assert_eq!(frames.len(), 10);
    let level = rms(&frames[9]);
    assert!((0.17..0.26).contains(&level), "rms {level}");
}

#[test]
fn a_broken_opus_packet_is_an_error_for_the_session() {
    let mut w = OggWriter::new(1);
    let mut m = Vec::new();
    // TOC code 3 with a frame count of 0: not a valid packet.
    w.page(&[0x03, 0x00], 960, 0, &mut m);
    let mut input = AudioIn::new().unwrap();
    assert!(matches!(input.push(&m), Err(StreamError::Opus(_))));
}
