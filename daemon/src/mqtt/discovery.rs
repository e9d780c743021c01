//! Home Assistant MQTT discovery payloads for the appliance's entities.

use super::Topics;
use serde_json::{json, Value};

/// (discovery topic, retained JSON config) for every entity.
pub fn entities(t: &Topics, discovery_prefix: &str, voices: &[String]) -> Vec<(String, Value)> {
    let id = &t.device_id;
    let device = json!({
        "identifiers": [format!("moshid_{id}")],
        "name": format!("moshid {id}"),
        "model": "moshid (Moshi full-duplex voice)",
        "manufacturer": "moshid",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let common = |name: &str, object: &str| {
        json!({
            "name": name,
            "unique_id": format!("moshid_{id}_{object}"),
            "object_id": format!("moshid_{id}_{object}"),
            "availability_topic": t.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "state_topic": t.state,
            "device": device,
        })
    };
    let with = |mut base: Value, extra: Value| {
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        base
    };
    let topic = |component: &str, object: &str| {
        format!("{discovery_prefix}/{component}/{id}/{object}/config")
    };
    vec![
        (
            topic("switch", "conversation"),
            with(
                common("Conversation", "conversation"),
                json!({
                    "command_topic": t.command("conversation"),
                    "value_template": "{{ 'ON' if value_json.phase == 'conversation' else 'OFF' }}",
                    "icon": "mdi:account-voice",
                }),
            ),
        ),
        (
            topic("switch", "mute"),
            with(
                common("Mute", "mute"),
                json!({
                    "command_topic": t.command("mute"),
                    "value_template": "{{ 'ON' if value_json.muted else 'OFF' }}",
                    "icon": "mdi:microphone-off",
                }),
            ),
        ),
        (
            topic("number", "volume"),
            with(
                common("Volume", "volume"),
                json!({
                    "command_topic": t.command("volume"),
                    "value_template": "{{ value_json.volume }}",
                    "min": 0, "max": 100, "step": 1,
                    "unit_of_measurement": "%",
                    "icon": "mdi:volume-high",
                }),
            ),
        ),
        (
            topic("select", "voice"),
            with(
                common("Voice", "voice"),
                json!({
                    "command_topic": t.command("voice"),
                    "value_template": "{{ value_json.voice }}",
                    "options": voices,
                }),
            ),
        ),
        (
            topic("button", "reset"),
            with(
                common("Reset conversation", "reset"),
                json!({ "command_topic": t.command("reset"), "payload_press": "PRESS" }),
            ),
        ),
        (
            topic("sensor", "latency"),
            with(
                common("Latency", "latency"),
                json!({
                    "value_template": "{{ value_json.latency_ms }}",
                    "unit_of_measurement": "ms",
                    "state_class": "measurement",
                    "entity_category": "diagnostic",
                }),
            ),
        ),
        (
            topic("sensor", "state"),
            with(
                common("State", "state"),
                json!({
                    "value_template": "{{ value_json.phase }}",
                    "json_attributes_topic": t.state,
                    "icon": "mdi:state-machine",
                }),
            ),
        ),
        (
            topic("sensor", "dropped_frames"),
            with(
                common("Dropped frames", "dropped_frames"),
                json!({
                    "value_template": "{{ value_json.dropped_frames }}",
                    "state_class": "total_increasing",
                    "entity_category": "diagnostic",
                }),
            ),
        ),
    ]
}
