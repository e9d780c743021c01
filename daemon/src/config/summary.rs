//! What a valid configuration means, in the words `moshid check-config` prints.

use super::{Config, ModelSource};

impl Config {
    /// One line per part: device id, model, audio, MQTT.
    pub fn summary(&self) -> Vec<String> {
        let model = match self.model.source {
            ModelSource::Hub => match self.voices.get(&self.model.voice) {
                Some(v) => format!(
                    "{} ({}) from Hugging Face{}",
                    v.repo,
                    v.lm_file,
                    if self.model.offline { ", offline" } else { "" }
                ),
                None => format!("no voice preset {:?}", self.model.voice),
            },
            ModelSource::Local => match &self.model.local {
                Some(l) => format!("local files ({})", l.lm.display()),
                None => "local files".into(),
            },
            ModelSource::Demo => "the built-in random-weight demo model".into(),
            ModelSource::Remote => match &self.model.remote {
                Some(r) => format!(
                    "a brain over the network ({}), no model here",
                    r.urls
                        .iter()
                        .map(|u| u.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "a brain over the network".into(),
            },
        };
        let m = &self.mqtt;
        let mqtt = if m.enabled {
            format!(
                "mqtt:      {}:{} ({}), topics under {}/{}/",
                m.host,
                m.port,
                if m.tls.is_some() { "TLS" } else { "plain TCP" },
                m.base_topic,
                self.device_id()
            )
        } else {
            "mqtt:      disabled".into()
        };
        vec![
            format!("device_id: {}", self.device_id()),
            self.model_line(&model),
            format!(
                "audio:     mic {:?}, speaker {:?} at {} Hz, {:?}",
                self.audio.capture, self.audio.playback, self.audio.rate, self.audio.format
            ),
            mqtt,
        ]
    }

    /// The model line: where it runs and how (a satellite runs none here).
    fn model_line(&self, model: &str) -> String {
        if self.model.source == ModelSource::Remote {
            return format!("model:     {model}");
        }
        format!(
            "model:     {model} on {}, dtype {}, context {} (voice {}); Mimi on {}{}",
            self.model.device,
            self.model.dtype,
            self.model.context,
            self.model.voice,
            self.model.mimi_device,
            if self.model.mimi_overlap {
                ", overlapping the LM"
            } else {
                ""
            }
        )
    }
}
