//! `moshid run` with `[wake]`: a microphone that says "Okay Nabu" while the room is idle starts
//! the room's conversation (MQTT state); with the wake word off nothing starts.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

/// Raw S16_LE 24 kHz mono for the ALSA `file` microphone: 2 s of silence, the committed
/// "Okay Nabu" clip (16 kHz, linearly interpolated to 24 kHz), then silence to 60 s.
fn write_wake_mic(path: &Path) {
    let clip = fixtures("wake/pos_okay_nabu_en-us.wav");
    let pcm: Vec<i16> = hound::WavReader::open(clip)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap())
        .collect();
    let mut out = vec![0i16; 48_000];
    for i in 0..pcm.len() * 3 / 2 {
        let pos = i as f64 * 2.0 / 3.0;
        let (k, f) = (pos as usize, pos.fract());
        let next = f64::from(pcm.get(k + 1).copied().unwrap_or(0));
        out.push((f64::from(pcm[k]) * (1.0 - f) + next * f).round() as i16);
    }
    out.resize(60 * 24_000, 0);
    let bytes: Vec<u8> = out.into_iter().flat_map(i16::to_le_bytes).collect();
    std::fs::write(path, bytes).unwrap();
}

fn run_with_wake(enabled: bool) -> (bool, String) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let notify = Notify::bind(dir.path());
    let obs = Observer::connect(broker.port, "obs", &[&topic("#")]);
    let extra = format!("[wake]\nenabled = {enabled}\nmodel = \"okay_nabu\"\n");
    let (cfg, alsa) = write_config(dir.path(), broker.port, &extra);
    write_wake_mic(&dir.path().join("mic.raw"));
    let mut d = start_daemon(dir.path(), &cfg, &alsa, &notify);
    assert!(
        notify.wait("READY=1", Duration::from_secs(120)),
        "no READY=1:\n{}",
        d.log()
    );
    let started = obs
        .wait_json(&topic("state"), Duration::from_secs(12), |v| {
            v["phase"] == "conversation"
        })
        .is_some();
    let log = d.log();
    d.terminate(Duration::from_secs(10));
    (started, log)
}

#[test]
fn the_wake_word_starts_the_rooms_conversation() {
    let (started, log) = run_with_wake(true);
    assert!(started, "no conversation after the wake word; log:\n{log}");
    assert!(log.contains("wake word heard"), "{log}");
}

#[test]
fn with_the_wake_word_off_nothing_starts() {
    let (started, log) = run_with_wake(false);
    assert!(
        !started,
        "a conversation started without the wake word; log:\n{log}"
    );
}
