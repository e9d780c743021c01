//! The Ogg reader against every writer of PROTOCOL.md's two lists, and malformed pages.
//! The `ogg` crate is the independent reference: it writes multi-packet and continued pages
//! for our reader, and reads (checking CRCs) what our writer makes.

use super::*;
use ogg::writing::PacketWriteEndInfo as End;

/// A page built byte by byte; `crc: None` computes the right one.
fn raw_page(flags: u8, seq: u32, lacing: &[u8], body: &[u8], crc: Option<u32>) -> Vec<u8> {
    let mut p = b"OggS".to_vec();
    p.push(0);
    p.push(flags);
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(lacing);
    p.extend_from_slice(body);
    let c = crc.unwrap_or_else(|| crc32(&p));
    p[22..26].copy_from_slice(&c.to_le_bytes());
    p
}

fn packet(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

fn read_all(messages: &[Vec<u8>]) -> (Vec<Vec<u8>>, ReaderStats) {
    let mut r = OggReader::new();
    let mut out = Vec::new();
    for m in messages {
        r.push(m).expect("a usable stream");
        while let Some(p) = r.next_packet() {
            out.push(p);
        }
    }
    (out, r.stats())
}

/// Pages made by the `ogg` crate; `ends[i]` says how packet i ends its page.
fn crate_pages(packets: &[Vec<u8>], ends: &[End]) -> Vec<u8> {
    let mut buf = Vec::new();
    {
        let mut w = ogg::writing::PacketWriter::new(&mut buf);
        for (i, (p, e)) in packets.iter().zip(ends).enumerate() {
            let e = match e {
                End::EndPage => End::EndPage,
                End::EndStream => End::EndStream,
                End::NormalPacket => End::NormalPacket,
            };
            w.write_packet(p.clone(), 0x1234, e, i as u64 * 960)
                .unwrap();
        }
    }
    buf
}

/// Splits a byte stream into its pages (for feeding one page per message).
fn split_pages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut starts: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"OggS")
        .map(|(i, _)| i)
        .collect();
    starts.push(bytes.len());
    starts
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

#[test]
fn crc_matches_the_ogg_reference_value() {
    // The check value of CRC-32/MPEG-2 without final xor and init 0 ("CRC-32/BZIP2" family
    // differs): computed by the ogg crate's reader accepting our pages (below), and here a
    // fixed vector so a table change cannot slip by.
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0x89a1_897f);
}

#[test]
fn our_pages_are_what_a_server_must_send() {
    // 1: OpusHead on a BOS page with a single segment; 2: OpusTags; 3: one packet per page;
    // granules in 48 kHz units; CRCs checked by the ogg crate.
    let mut w = OggWriter::new(99);
    let mut bytes = Vec::new();
    let head = crate::web::opus::opus_head(24_000);
    w.page(&head, 0, FLAG_BOS, &mut bytes);
    w.page(&crate::web::opus::opus_tags("moshid"), 0, 0, &mut bytes);
    let audio: Vec<Vec<u8>> = (0..5).map(|i| packet(100 + 120 * i, i as u8)).collect();
    for p in &audio {
        w.page(p, 1920, 0, &mut bytes);
    }
    assert_eq!(bytes[5], FLAG_BOS);
    assert_eq!(bytes[26], 1, "OpusHead page: a single segment");
    let mut r = ogg::reading::PacketReader::new(std::io::Cursor::new(bytes.clone()));
    let mut got = Vec::new();
    while let Some(p) = r.read_packet().expect("valid pages and CRCs") {
        assert!(p.first_in_page() && p.last_in_page(), "one packet per page");
        assert_eq!(p.stream_serial(), 99);
        got.push((p.data.clone(), p.absgp_page()));
    }
    assert_eq!(got.len(), 7);
    assert!(got[0].0.starts_with(b"OpusHead") && got[1].0.starts_with(b"OpusTags"));
    for (i, (data, granule)) in got[2..].iter().enumerate() {
        assert_eq!(data, &audio[i]);
        assert_eq!(*granule, 1920 * (i as u64 + 1));
    }
    let seqs: Vec<u32> = split_pages(&bytes)
        .iter()
        .map(|p| u32::from_le_bytes([p[18], p[19], p[20], p[21]]))
        .collect();
    assert_eq!(seqs, (0..7).collect::<Vec<u32>>());
}

#[test]
fn web_client_two_packets_a_page_headers_apart_and_eos() {
    // opus-recorder: OpusHead and OpusTags as separate messages, then 2 packets per page,
    // random serial, EOS on the last page.
    let head = crate::web::opus::opus_head(48_000);
    let tags = crate::web::opus::opus_tags("Recorder.JS");
    let audio: Vec<Vec<u8>> = (0..8).map(|i| packet(60 + i, i as u8)).collect();
    let mut packets = vec![head.clone(), tags.clone()];
    packets.extend(audio.iter().cloned());
    let mut ends = vec![End::EndPage, End::EndPage];
    for i in 0..8 {
        ends.push(match i {
            7 => End::EndStream,
            i if i % 2 == 1 => End::EndPage,
            _ => End::NormalPacket,
        });
    }
    let pages = split_pages(&crate_pages(&packets, &ends));
    assert_eq!(
        pages.len(),
        6,
        "two header pages, four audio pages of two packets"
    );
    let (got, stats) = read_all(&pages);
    assert_eq!(got, packets);
    assert_eq!(stats.pages, 6);
    assert_eq!(
        stats.bad_crc + stats.skipped_bytes + stats.dropped_partial,
        0
    );
}

#[test]
fn moshi_cli_both_headers_in_the_first_message() {
    let mut w = OggWriter::new(5);
    let mut first = Vec::new();
    w.page(
        &crate::web::opus::opus_head(24_000),
        0,
        FLAG_BOS,
        &mut first,
    );
    w.page(&crate::web::opus::opus_tags("moshi"), 0, 0, &mut first);
    let mut messages = vec![first];
    for i in 0..4 {
        let mut m = Vec::new();
        w.page(&packet(90, i), 1920, 0, &mut m);
        messages.push(m);
    }
    let (got, _) = read_all(&messages);
    assert_eq!(got.len(), 6);
    assert_eq!(got[5], packet(90, 3));
}

#[test]
fn lacing_across_255_and_exact_multiples() {
    // 600 bytes = 255 + 255 + 90; 510 = 255 + 255 + a closing 0; 255 = 255 + 0.
    let packets = vec![packet(600, 1), packet(510, 2), packet(255, 3), packet(0, 4)];
    let ends = vec![
        End::NormalPacket,
        End::EndPage,
        End::NormalPacket,
        End::EndPage,
    ];
    let (got, _) = read_all(&split_pages(&crate_pages(&packets, &ends)));
    assert_eq!(got, packets);
    // And our writer gives the same packets back through the ogg crate.
    let mut w = OggWriter::new(1);
    let mut bytes = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        w.page(p, 960, if i == 0 { FLAG_BOS } else { 0 }, &mut bytes);
    }
    let mut r = ogg::reading::PacketReader::new(std::io::Cursor::new(bytes));
    for p in &packets {
        assert_eq!(&r.read_packet().unwrap().unwrap().data, p);
    }
}

#[test]
fn packets_continued_across_pages_are_reassembled() {
    // 200 packets of 300 bytes (2 segments each) overflow the 255-segment table, so the
    // ogg crate continues packets on the next page.
    let packets: Vec<Vec<u8>> = (0..200).map(|i| packet(300, i as u8)).collect();
    let mut ends = vec![End::NormalPacket; 199];
    ends.push(End::EndStream);
    let bytes = crate_pages(&packets, &ends);
    let pages = split_pages(&bytes);
    assert!(pages.iter().skip(1).any(|p| p[5] & FLAG_CONTINUED != 0));
    let (got, stats) = read_all(&pages);
    assert_eq!(got, packets);
    assert_eq!(stats.dropped_partial, 0);
}

#[test]
fn pages_split_anywhere_across_messages() {
    let packets: Vec<Vec<u8>> = (0..6).map(|i| packet(70 * i + 1, i as u8)).collect();
    let mut w = OggWriter::new(3);
    let mut bytes = Vec::new();
    for p in &packets {
        w.page(p, 960, 0, &mut bytes);
    }
    for chunk in [1, 2, 3, 5, 7, 27, 28, 100] {
        let messages: Vec<Vec<u8>> = bytes.chunks(chunk).map(|c| c.to_vec()).collect();
        let (got, stats) = read_all(&messages);
        assert_eq!(got, packets, "chunks of {chunk} bytes");
        assert_eq!(stats.skipped_bytes, 0, "chunks of {chunk} bytes");
    }
}

#[test]
fn resynchronises_on_oggs_after_junk() {
    let mut w = OggWriter::new(3);
    let mut stream = b"garbage before the first page".to_vec();
    w.page(&packet(40, 1), 960, 0, &mut stream);
    stream.extend_from_slice(b"OgXjunk between pages Ogg");
    w.page(&packet(40, 2), 960, 0, &mut stream);
    let (got, stats) = read_all(&[stream]);
    assert_eq!(got, vec![packet(40, 1), packet(40, 2)]);
    assert_eq!(stats.skipped_bytes, 29 + 25);
}

#[test]
fn fujielab_single_lacing_value_for_a_long_packet_is_repaired() {
    // Its writer puts min(len, 255) as the only lacing value; the CRC covers the real body.
    let long = packet(400, 9);
    let mut messages = Vec::new();
    for seq in 0..3 {
        messages.push(raw_page(0, seq, &[255], &long, None));
    }
    messages.push(raw_page(0, 3, &[120], &packet(120, 1), None));
    let (got, stats) = read_all(&messages);
    assert_eq!(got, vec![long.clone(), long.clone(), long, packet(120, 1)]);
    assert_eq!(stats.repaired, 3);
    // All in one message, too.
    let (got, _) = read_all(&[messages.concat()]);
    assert_eq!(got.len(), 4);
}

#[test]
fn a_bad_crc_is_counted_not_fatal() {
    let p = raw_page(0, 2, &[50], &packet(50, 1), Some(0xdead_beef));
    let (got, stats) = read_all(&[p]);
    assert_eq!(got, vec![packet(50, 1)]);
    assert_eq!(stats.bad_crc, 1);
}

#[test]
fn a_truncated_page_does_not_swallow_the_next_one() {
    let mut cut = raw_page(0, 2, &[200], &packet(200, 1), None);
    cut.truncate(27 + 1 + 50);
    let good = raw_page(0, 3, &[30], &packet(30, 2), None);
    let (got, _) = read_all(&[cut, good]);
    assert_eq!(got, vec![packet(30, 2)]);
}

#[test]
fn continuations_without_a_start_and_starts_without_a_continuation_are_dropped() {
    let orphan = raw_page(
        FLAG_CONTINUED,
        2,
        &[40, 20],
        &[packet(40, 1), packet(20, 2)].concat(),
        None,
    );
    let unfinished = raw_page(0, 3, &[255], &packet(255, 3), None);
    let fresh = raw_page(0, 4, &[10], &packet(10, 4), None);
    let (got, stats) = read_all(&[orphan, unfinished, fresh]);
    assert_eq!(got, vec![packet(20, 2), packet(10, 4)]);
    assert_eq!(stats.dropped_partial, 2);
}

#[test]
fn another_ogg_version_is_an_error_and_junk_that_looks_like_one_is_not() {
    let mut v1 = raw_page(0, 0, &[3], b"abc", None);
    v1[4] = 1;
    v1[22..26].copy_from_slice(&[0; 4]);
    let c = crc32(&v1);
    v1[22..26].copy_from_slice(&c.to_le_bytes());
    assert_eq!(OggReader::new().push(&v1), Err(OggError::Version(1)));
    let mut fake = b"OggS\x07junk junk junk junk junk junk junk".to_vec();
    fake.extend(raw_page(0, 0, &[3], b"abc", None));
    let (got, _) = read_all(&[fake]);
    assert_eq!(got, vec![b"abc".to_vec()]);
}

#[test]
fn garbage_without_pages_and_giant_packets_are_errors() {
    let mut r = OggReader::new();
    let junk = vec![0x5au8; 8 * 1024];
    let err = (0..10).find_map(|_| r.push(&junk).err());
    assert!(matches!(err, Some(OggError::Garbage(_))), "{err:?}");

    // A packet continued over pages past MAX_PACKET.
    let mut r = OggReader::new();
    let full = vec![255u8; 255];
    let body = vec![1u8; 255 * 255];
    let mut err = None;
    for seq in 0..3 {
        let flags = if seq == 0 { 0 } else { FLAG_CONTINUED };
        if let Err(e) = r.push(&raw_page(flags, seq, &full, &body, None)) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(OggError::PacketTooLarge));
}

#[test]
fn malformed_streams_read_byte_by_byte_give_what_they_give_whole() {
    // Each case's stream fed whole and one byte per message (the reader's memo of a waiting
    // page must not change what it finds).
    let mut cut = raw_page(0, 2, &[200], &packet(200, 1), None);
    cut.truncate(27 + 1 + 50);
    let good = raw_page(0, 3, &[30], &packet(30, 2), None);
    let long = packet(400, 9);
    let fujielab: Vec<u8> = (0..3)
        .flat_map(|seq| raw_page(0, seq, &[255], &long, None))
        .chain(raw_page(0, 3, &[120], &packet(120, 1), None))
        .collect();
    let mut fake = b"OggS\x07junk junk junk junk junk junk junk".to_vec();
    fake.extend(raw_page(0, 0, &[3], b"abc", None));
    // A capture inside a waiting page's body, itself incomplete, then a good page.
    let mut nested = raw_page(0, 1, &[255, 255, 40], &packet(550, 3), None);
    nested.truncate(200);
    nested.extend_from_slice(&raw_page(0, 2, &[100], &packet(100, 4), None)[..60]);
    nested.extend(raw_page(0, 3, &[20], &packet(20, 5), None));
    let cases = [
        [cut, good.clone()].concat(),
        fujielab,
        fake,
        nested,
        [raw_page(0, 2, &[50], &packet(50, 1), Some(7)), good].concat(),
    ];
    for (i, stream) in cases.iter().enumerate() {
        let (whole, whole_stats) = read_all(std::slice::from_ref(stream));
        assert!(!whole.is_empty(), "case {i}");
        for chunk in [1, 3, 64] {
            let messages: Vec<Vec<u8>> = stream.chunks(chunk).map(|c| c.to_vec()).collect();
            let (got, stats) = read_all(&messages);
            assert_eq!(got, whole, "case {i}, chunks of {chunk}");
            assert_eq!(
                stats.pages, whole_stats.pages,
                "case {i}, chunks of {chunk}"
            );
        }
    }
}
