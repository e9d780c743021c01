//! Home Assistant MQTT discovery payloads for the appliance's entities.
//!
//! Every config is a typed value: the fields all entities share live in [`EntityConfig`], the
//! ones a Home Assistant component adds in a [`Component`] variant, flattened into the same
//! JSON object, so a key is spelled once and an entity cannot miss a common field.

use super::Topics;
use serde::Serialize;

/// The Home Assistant device that groups all of the appliance's entities.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// Stable ids Home Assistant matches the device by: `moshid_<device id>`.
    pub identifiers: Vec<String>,
    /// Display name: `moshid <device id>`.
    pub name: String,
    /// Product description shown on the device page.
    pub model: &'static str,
    /// Shown on the device page.
    pub manufacturer: &'static str,
    /// The daemon's version, so an upgrade is visible in Home Assistant.
    pub sw_version: &'static str,
}

impl Device {
    /// The device for `device_id`.
    pub fn new(device_id: &str) -> Self {
        Device {
            identifiers: vec![format!("moshid_{device_id}")],
            name: format!("moshid {device_id}"),
            model: "moshid (Moshi full-duplex voice)",
            manufacturer: "moshid",
            sw_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The retained discovery config of one entity.
#[derive(Debug, Clone, Serialize)]
pub struct EntityConfig {
    /// Display name.
    pub name: &'static str,
    /// `moshid_<device id>_<object>`: unique across appliances, stable across restarts.
    pub unique_id: String,
    /// The same as `unique_id`, so the entity id is predictable too.
    pub object_id: String,
    /// Where the daemon publishes `online` / `offline` (last will).
    pub availability_topic: String,
    /// The availability payload for online.
    pub payload_available: &'static str,
    /// The availability payload for offline.
    pub payload_not_available: &'static str,
    /// The retained JSON state every entity reads its value from.
    pub state_topic: String,
    /// The device it belongs to.
    pub device: Device,
    /// What its Home Assistant component adds.
    #[serde(flatten)]
    pub component: Component,
}

/// The fields a Home Assistant component adds to the common ones.
///
/// Untagged: the variant only chooses the fields, it is not itself a key of the JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Component {
    /// An on/off command with its state.
    Switch {
        /// Where `ON` / `OFF` are sent.
        command_topic: String,
        /// Jinja template turning the state into `ON` / `OFF`.
        value_template: &'static str,
        /// Material Design icon.
        icon: &'static str,
    },
    /// A numeric setting.
    Number {
        /// Where the new value is sent.
        command_topic: String,
        /// Jinja template reading the value from the state.
        value_template: &'static str,
        /// Smallest value.
        min: u32,
        /// Largest value.
        max: u32,
        /// Slider step.
        step: u32,
        /// Unit shown after the value.
        unit_of_measurement: &'static str,
        /// Material Design icon.
        icon: &'static str,
    },
    /// A choice among fixed options.
    Select {
        /// Where the chosen option is sent.
        command_topic: String,
        /// Jinja template reading the current option from the state.
        value_template: &'static str,
        /// The options.
        options: Vec<String>,
    },
    /// A stateless action.
    Button {
        /// Where a press is sent.
        command_topic: String,
        /// The payload of a press.
        payload_press: &'static str,
    },
    /// A read-only value.
    Sensor {
        /// Jinja template reading the value from the state.
        value_template: &'static str,
        /// Unit shown after the value, if it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        unit_of_measurement: Option<&'static str>,
        /// `measurement` or `total_increasing`, for long-term statistics.
        #[serde(skip_serializing_if = "Option::is_none")]
        state_class: Option<&'static str>,
        /// `diagnostic` keeps it off the main dashboard.
        #[serde(skip_serializing_if = "Option::is_none")]
        entity_category: Option<&'static str>,
        /// Topic whose JSON becomes the entity's attributes.
        #[serde(skip_serializing_if = "Option::is_none")]
        json_attributes_topic: Option<String>,
        /// Material Design icon.
        #[serde(skip_serializing_if = "Option::is_none")]
        icon: Option<&'static str>,
    },
    /// Something that happens (not a value): each message on `topic` is one event, its
    /// JSON's `event_type` one of `event_types`.
    Event {
        /// Where the events are published; it becomes the config's `state_topic`.
        #[serde(skip)]
        topic: String,
        /// The event types the entity shows.
        event_types: Vec<&'static str>,
        /// Material Design icon.
        icon: &'static str,
    },
}

impl Component {
    /// The component's name in the discovery topic.
    pub fn kind(&self) -> &'static str {
        match self {
            Component::Switch { .. } => "switch",
            Component::Number { .. } => "number",
            Component::Select { .. } => "select",
            Component::Button { .. } => "button",
            Component::Sensor { .. } => "sensor",
            Component::Event { .. } => "event",
        }
    }

    /// Where the entity reads from: the retained state, or an event entity's own topic.
    fn state_topic(&self, t: &Topics) -> String {
        match self {
            Component::Event { topic, .. } => topic.clone(),
            _ => t.state.clone(),
        }
    }
}

/// An entity before the common fields are added: (object id, display name, component).
type Entity = (&'static str, &'static str, Component);

/// (discovery topic, retained config) for every entity, without personas (the tests'
/// comparisons with the published JSON).
#[cfg(test)]
pub fn entities(
    t: &Topics,
    discovery_prefix: &str,
    voices: &[String],
) -> Vec<(String, EntityConfig)> {
    entities_with(t, discovery_prefix, voices, &[])
}

/// [`entities`] with a persona select when `personas` is not empty.
pub fn entities_with(
    t: &Topics,
    discovery_prefix: &str,
    voices: &[String],
    personas: &[String],
) -> Vec<(String, EntityConfig)> {
    let id = &t.device_id;
    let device = Device::new(id);
    let persona = (!personas.is_empty()).then(|| {
        let select = Component::Select {
            command_topic: t.command("persona"),
            value_template: "{{ value_json.persona }}",
            options: personas.to_vec(),
        };
        ("persona", "Persona", select)
    });
    controls(t, voices)
        .into_iter()
        .chain(persona)
        .chain(sensors(t))
        .chain(wake(t))
        .map(|(object, name, component)| {
            let topic = format!(
                "{discovery_prefix}/{}/{id}/{object}/config",
                component.kind()
            );
            let config = EntityConfig {
                name,
                unique_id: format!("moshid_{id}_{object}"),
                object_id: format!("moshid_{id}_{object}"),
                availability_topic: t.availability.clone(),
                payload_available: "online",
                payload_not_available: "offline",
                state_topic: component.state_topic(t),
                device: device.clone(),
                component,
            };
            (topic, config)
        })
        .collect()
}

/// The entities Home Assistant can command.
fn controls(t: &Topics, voices: &[String]) -> Vec<Entity> {
    let switch = |object, value_template, icon| Component::Switch {
        command_topic: t.command(object),
        value_template,
        icon,
    };
    vec![
        (
            "conversation",
            "Conversation",
            switch(
                "conversation",
                "{{ 'ON' if value_json.phase == 'conversation' else 'OFF' }}",
                "mdi:account-voice",
            ),
        ),
        (
            "mute",
            "Mute",
            switch(
                "mute",
                "{{ 'ON' if value_json.muted else 'OFF' }}",
                "mdi:microphone-off",
            ),
        ),
        (
            "volume",
            "Volume",
            Component::Number {
                command_topic: t.command("volume"),
                value_template: "{{ value_json.volume }}",
                min: 0,
                max: 100,
                step: 1,
                unit_of_measurement: "%",
                icon: "mdi:volume-high",
            },
        ),
        (
            "voice",
            "Voice",
            Component::Select {
                command_topic: t.command("voice"),
                value_template: "{{ value_json.voice }}",
                options: voices.to_vec(),
            },
        ),
        (
            "reset",
            "Reset conversation",
            Component::Button {
                command_topic: t.command("reset"),
                payload_press: "PRESS",
            },
        ),
    ]
}

/// The read-only entities.
fn sensors(t: &Topics) -> Vec<Entity> {
    vec![
        (
            "latency",
            "Latency",
            Component::Sensor {
                value_template: "{{ value_json.latency_ms }}",
                unit_of_measurement: Some("ms"),
                state_class: Some("measurement"),
                entity_category: Some("diagnostic"),
                json_attributes_topic: None,
                icon: None,
            },
        ),
        (
            "state",
            "State",
            Component::Sensor {
                value_template: "{{ value_json.phase }}",
                unit_of_measurement: None,
                state_class: None,
                entity_category: None,
                json_attributes_topic: Some(t.state.clone()),
                icon: Some("mdi:state-machine"),
            },
        ),
        (
            "conversations",
            "Conversations",
            Component::Sensor {
                value_template: "{{ value_json.conversations }}",
                unit_of_measurement: None,
                state_class: Some("measurement"),
                entity_category: None,
                // The state's attributes carry `endpoints`: who the conversations are with.
                json_attributes_topic: Some(t.state.clone()),
                icon: Some("mdi:account-voice"),
            },
        ),
        (
            "dropped_frames",
            "Dropped frames",
            Component::Sensor {
                value_template: "{{ value_json.dropped_frames }}",
                unit_of_measurement: None,
                state_class: Some("total_increasing"),
                entity_category: Some("diagnostic"),
                json_attributes_topic: None,
                icon: None,
            },
        ),
    ]
}

/// The wake word's entities: its switch (on while a wake word listens) and its detections.
fn wake(t: &Topics) -> Vec<Entity> {
    vec![
        (
            "wake",
            "Wake word",
            Component::Switch {
                command_topic: t.command("wake"),
                value_template: "{{ 'ON' if value_json.wake_word else 'OFF' }}",
                icon: "mdi:ear-hearing",
            },
        ),
        (
            "wake_event",
            "Wake word heard",
            Component::Event {
                topic: t.wake.clone(),
                event_types: vec!["wake"],
                icon: "mdi:account-voice",
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The wake word's entities as Home Assistant's MQTT switch and event documentation
    /// describe them, written by hand for these topics.
    const WAKE: &str = include_str!("testdata/discovery_kitchen_wake.json");

    /// The configs for `kitchen` with `moshiko` and `moshika`, the version as in the files.
    fn kitchen() -> Vec<Value> {
        let t = Topics::new("moshid", "kitchen");
        let voices = vec!["moshiko".to_string(), "moshika".to_string()];
        let mut got = serde_json::to_value(entities(&t, "homeassistant", &voices)).unwrap();
        for pair in got.as_array_mut().unwrap() {
            pair[1]["device"]["sw_version"] = "0.1.0".into();
        }
        got.as_array().unwrap().clone()
    }

    #[test]
    fn wake_entities_are_the_documented_ones() {
        let want: Vec<Value> = serde_json::from_str(WAKE).unwrap();
        let got = kitchen();
        for w in &want {
            let g = got.iter().find(|g| g[0] == w[0]);
            assert_eq!(g, Some(w), "config on {} differs", w[0]);
        }
        // The event entity's topic is the wake topic, not the retained state.
        assert_eq!(want[1][1]["state_topic"], "moshid/kitchen/wake");
    }

    /// What the hand-merged `json!` code published before the configs were typed, captured
    /// from it for these topics and voices: the typed configs must say exactly the same.
    const BEFORE: &str = include_str!("testdata/discovery_kitchen.json");

    fn is_wake(pair: &Value) -> bool {
        pair[0]
            .as_str()
            .is_some_and(|t| t.contains("/kitchen/wake") || t.contains("/kitchen/conversations"))
    }

    #[test]
    fn conversations_sensor_counts_them_with_the_endpoints_as_attributes() {
        let got = kitchen();
        let c = got
            .iter()
            .find(|g| g[0] == "homeassistant/sensor/kitchen/conversations/config")
            .expect("a conversations sensor");
        let want = serde_json::json!({
            "availability_topic": "moshid/kitchen/availability",
            "device": {
                "identifiers": ["moshid_kitchen"],
                "manufacturer": "moshid",
                "model": "moshid (Moshi full-duplex voice)",
                "name": "moshid kitchen",
                "sw_version": "0.1.0"
            },
            "icon": "mdi:account-voice",
            "json_attributes_topic": "moshid/kitchen/state",
            "name": "Conversations",
            "object_id": "moshid_kitchen_conversations",
            "payload_available": "online",
            "payload_not_available": "offline",
            "state_class": "measurement",
            "state_topic": "moshid/kitchen/state",
            "unique_id": "moshid_kitchen_conversations",
            "value_template": "{{ value_json.conversations }}"
        });
        assert_eq!(c[1], want);
    }

    #[test]
    fn configs_are_unchanged() {
        let t = Topics::new("moshid", "kitchen");
        let voices = vec!["moshiko".to_string(), "moshika".to_string()];
        let got = serde_json::to_value(entities(&t, "homeassistant", &voices)).unwrap();
        // The wake word's entities came later: `wake_entities_are_the_documented_ones`.
        let got: Vec<Value> = got
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !is_wake(p))
            .cloned()
            .collect();
        let got = Value::Array(got);
        let mut want: Value = serde_json::from_str(BEFORE).unwrap();
        // The fixture was captured at 0.1.0; the version is the one field meant to move.
        for pair in want.as_array_mut().unwrap() {
            pair[1]["device"]["sw_version"] = env!("CARGO_PKG_VERSION").into();
        }
        let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "config on {} differs", w[0]);
        }
    }
}
