//! `moshid run` with `[wake]`: a microphone that says "Okay Nabu" while the room is idle starts
//! the room's conversation (MQTT state, the `wake` event, the wake chime on the speaker file),
//! and the idle timeout ends it (the end chime); with the wake word off nothing starts.

mod support;

use moshid_models::wake::chime::{render, Chime};
use rumqttc::QoS;
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

/// The test config's volume (`[audio] volume` default 80).
const GAIN: f32 = 0.8;

/// `sound` as the speaker file holds it: at [`GAIN`], as hal writes S16.
fn as_played(sound: &[f32]) -> Vec<i16> {
    sound
        .iter()
        .map(|&s| {
            ((0.0 + s * GAIN) * 32768.0)
                .round()
                .clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Where `want` starts in `got` (each sample within 1 LSB), if it is there.
fn find(got: &[i16], want: &[i16]) -> Option<usize> {
    let peak = (0..want.len()).max_by_key(|&i| want[i].unsigned_abs())?;
    let close = |a: i16, b: i16| (i32::from(a) - i32::from(b)).abs() <= 1;
    (0..=got.len().checked_sub(want.len())?).find(|&o| {
        close(got[o + peak], want[peak]) && got[o..].iter().zip(want).all(|(&g, &w)| close(g, w))
    })
}

fn speaker(dir: &Path) -> Vec<i16> {
    let b = std::fs::read(dir.join("spk.raw")).unwrap_or_default();
    b.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// What one run showed.
struct Run {
    /// The state's `wake_word` once the room ran.
    wake_word: serde_json::Value,
    started: bool,
    /// A state `idle` after the conversation.
    ended: bool,
    /// Payloads on the `wake` topic.
    wake_events: Vec<serde_json::Value>,
    /// Offsets of the wake chime's first frame and of the whole end chime on the speaker.
    wake_chime: Option<usize>,
    end_chime: Option<usize>,
    /// Home Assistant's event entity config was published.
    event_entity: bool,
    log: String,
}

/// `moshid run` with `[wake] enabled`, and `set/wake OFF` retained before the start when
/// `switch_off`; a 2 s idle timeout.
fn run_with_wake(enabled: bool, switch_off: bool) -> Run {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let notify = Notify::bind(dir.path());
    let obs = Observer::connect(broker.port, "obs", &[&topic("#"), "homeassistant/#"]);
    if switch_off {
        // Retained: the daemon gets it as it subscribes, long before the clip plays.
        let off = b"OFF".to_vec();
        let t = topic("set/wake");
        obs.client.publish(t, QoS::AtLeastOnce, true, off).unwrap();
    }
    let extra = format!("[wake]\nenabled = {enabled}\nmodel = \"okay_nabu\"\n");
    let (cfg, alsa) = write_config(dir.path(), broker.port, &extra);
    let toml = std::fs::read_to_string(&cfg).unwrap();
    let toml = toml.replace("idle_timeout_s = 0\n", "idle_timeout_s = 2\n");
    std::fs::write(&cfg, toml).unwrap();
    write_wake_mic(&dir.path().join("mic.raw"));
    let mut d = start_daemon(dir.path(), &cfg, &alsa, &notify);
    assert!(
        notify.wait("READY=1", Duration::from_secs(120)),
        "no READY=1:\n{}",
        d.log()
    );
    let state = topic("state");
    let listening = enabled && !switch_off;
    let want_word = serde_json::json!(if listening { Some("okay_nabu") } else { None });
    let wake_word = obs
        .wait_json(&state, Duration::from_secs(10), |v| {
            v["phase"] == "idle" && v["wake_word"] == want_word
        })
        .map(|v| v["wake_word"].clone())
        .unwrap_or_else(|| serde_json::json!("no idle state with the expected wake_word"));
    let started = obs
        .wait_json(&state, Duration::from_secs(12), |v| {
            v["phase"] == "conversation"
        })
        .is_some();
    let ended = started && ended_after_conversation(&obs, &state);
    let wake_chime = as_played(&render(Chime::Wake, 24_000)[..1920]);
    let end_chime = as_played(&render(Chime::End, 24_000));
    // The end chime follows the idle state by a few frames: wait until it is in the file.
    let mut end_at = wait_for(Duration::from_secs(if ended { 10 } else { 0 }), || {
        find(&speaker(dir.path()), &end_chime)
    });
    let log = d.log();
    d.terminate(Duration::from_secs(10));
    let spk = speaker(dir.path());
    end_at = end_at.or_else(|| find(&spk, &end_chime));
    let wake_events = obs
        .on(&topic("wake"))
        .iter()
        .filter_map(|m| serde_json::from_str(&m.payload).ok())
        .collect();
    let event_entity = !obs
        .on("homeassistant/event/e2e/wake_event/config")
        .is_empty();
    Run {
        wake_word,
        started,
        ended,
        wake_events,
        wake_chime: find(&spk, &wake_chime),
        end_chime: end_at,
        event_entity,
        log,
    }
}

/// A state `idle` comes after the first `conversation` (the 2 s idle timeout).
fn ended_after_conversation(obs: &Observer, state: &str) -> bool {
    let phases = || -> Vec<String> {
        obs.on(state)
            .iter()
            .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).ok())
            .map(|v| v["phase"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    wait_for(Duration::from_secs(20), || {
        let p = phases();
        let conv = p.iter().position(|x| x == "conversation")?;
        p[conv..].iter().any(|x| x == "idle").then_some(())
    })
    .is_some()
}

#[test]
fn the_wake_word_starts_the_rooms_conversation_with_chimes() {
    let r = run_with_wake(true, false);
    let log = &r.log;
    assert_eq!(r.wake_word, "okay_nabu", "{log}");
    assert!(
        r.started,
        "no conversation after the wake word; log:\n{log}"
    );
    assert!(log.contains("wake word heard"), "{log}");
    assert_eq!(r.wake_events.len(), 1, "{:?}", r.wake_events);
    let ev = &r.wake_events[0];
    assert_eq!(ev["event_type"], "wake");
    assert_eq!(ev["wake_word"], "okay_nabu");
    assert!(ev["probability"].as_f64().unwrap() > 0.5, "{ev}");
    assert!(r.event_entity, "no Home Assistant event entity");
    assert!(
        r.ended,
        "the idle timeout did not end the conversation; log:\n{log}"
    );
    let wake_at = r.wake_chime.expect("the wake chime is not on the speaker");
    let end_at = r.end_chime.expect("the end chime is not on the speaker");
    assert!(
        wake_at < end_at,
        "wake chime at {wake_at}, end chime at {end_at}"
    );
}

#[test]
fn with_the_wake_word_off_in_the_config_nothing_starts() {
    let r = run_with_wake(false, false);
    assert_eq!(r.wake_word, serde_json::Value::Null, "{}", r.log);
    assert!(!r.started, "a conversation started; log:\n{}", r.log);
    assert!(r.wake_events.is_empty());
    assert_eq!((r.wake_chime, r.end_chime), (None, None));
}

#[test]
fn with_the_wake_switch_off_nothing_starts() {
    let r = run_with_wake(true, true);
    assert_eq!(r.wake_word, serde_json::Value::Null, "{}", r.log);
    assert!(!r.started, "a conversation started; log:\n{}", r.log);
    assert!(r.wake_events.is_empty());
    assert_eq!((r.wake_chime, r.end_chime), (None, None));
}
