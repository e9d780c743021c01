//! The JSON bodies moshid publishes besides the state: typed, so a field is named once.

use serde::Serialize;

/// A command that was refused, on the `error` topic.
#[derive(Debug, Serialize)]
pub struct Rejected<'a> {
    /// The topic it came on.
    pub topic: &'a str,
    /// Its first 100 characters (lossy UTF-8).
    pub payload: String,
    /// Why it was refused.
    pub error: &'a str,
}

impl<'a> Rejected<'a> {
    /// The report for `payload` received on `topic`.
    pub fn new(topic: &'a str, payload: &[u8], error: &'a str) -> Self {
        let payload = String::from_utf8_lossy(payload).chars().take(100).collect();
        Rejected {
            topic,
            payload,
            error,
        }
    }
}

/// A failure of the pipeline, on the `error` topic.
#[derive(Debug, Serialize)]
pub struct Failure<'a> {
    /// What failed.
    pub error: &'a str,
}

/// A piece of the text transcript: on the `transcript` topic, and a line of `demo --transcript`.
#[derive(Debug, Serialize)]
pub struct TranscriptPiece<'a> {
    /// The text.
    pub text: &'a str,
    /// Seconds from the start of the conversation, to the millisecond.
    pub time: f64,
}

impl<'a> TranscriptPiece<'a> {
    /// `text` spoken at `time` seconds.
    pub fn new(text: &'a str, time: f64) -> Self {
        TranscriptPiece {
            text,
            time: (time * 1000.0).round() / 1000.0,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The wake word was heard, on the `wake` topic: Home Assistant's MQTT `event` entity reads
/// `event_type` (one of its `event_types`) and keeps the other keys as attributes.
#[derive(Debug, Serialize)]
pub struct WakeEvent<'a> {
    /// Always `wake`.
    pub event_type: &'static str,
    /// The wake word's model (`okay_nabu`, ...).
    pub wake_word: &'a str,
    /// The detector's window mean that crossed the cutoff, to 0.001.
    pub probability: f64,
}

impl<'a> WakeEvent<'a> {
    /// The event for a detection of `wake_word` at `probability`.
    pub fn new(wake_word: &'a str, probability: f64) -> Self {
        WakeEvent {
            event_type: "wake",
            wake_word,
            probability: (probability * 1000.0).round() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_documented_json() {
        let r = Rejected::new("moshid/x/set/voice", "é".repeat(150).as_bytes(), "no");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["topic"], "moshid/x/set/voice");
        assert_eq!(v["payload"].as_str().unwrap().chars().count(), 100);
        assert_eq!(v["error"], "no");
        let f = serde_json::to_string(&Failure { error: "mic gone" }).unwrap();
        assert_eq!(f, r#"{"error":"mic gone"}"#);
        assert_eq!(
            TranscriptPiece::new("hi", 1.23456).to_json(),
            r#"{"text":"hi","time":1.235}"#
        );
        let w = serde_json::to_string(&WakeEvent::new("okay_nabu", 0.96875)).unwrap();
        assert_eq!(
            w,
            r#"{"event_type":"wake","wake_word":"okay_nabu","probability":0.969}"#
        );
    }
}
