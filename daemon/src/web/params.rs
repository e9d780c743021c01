//! Query parameters: `/api/chat`'s per-session sampling (PROTOCOL.md, "Endpoint") and
//! persona (NVIDIA's `voice_prompt`/`text_prompt`, or a configured `persona`),
//! `/api/control`'s controls, and the token.

use super::backend::Control;
use crate::engine::PersonaRequest;

/// Sampling settings a session asked for; None = the daemon's configured value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionSampling {
    /// `text_temperature`.
    pub text_temperature: Option<f64>,
    /// `text_topk`.
    pub text_topk: Option<usize>,
    /// `audio_temperature`.
    pub audio_temperature: Option<f64>,
    /// `audio_topk`.
    pub audio_topk: Option<usize>,
    /// `text_seed`.
    pub text_seed: Option<u64>,
    /// `audio_seed`.
    pub audio_seed: Option<u64>,
}

/// A parameter that does not parse: the HTTP 400 body.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("query parameter {name}={value:?}: {why}")]
pub struct BadParam {
    /// Its name.
    pub name: String,
    /// What came.
    pub value: String,
    /// What was expected.
    pub why: &'static str,
}

/// Percent-decodes one query component (`+` is a space; a stray `%` stays as it is).
pub fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let pair = (b[i] == b'%')
            .then(|| Some((hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?)))
            .flatten();
        match (b[i], pair) {
            (b'%', Some((h, l))) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's key/value pairs, decoded, in order.
pub fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// The longest `text_prompt` taken (NVIDIA's roles are a few hundred characters).
const MAX_ROLE_CHARS: usize = 4000;

/// The persona a session asks for: `persona=NAME` (a `[personas]` entry), or NVIDIA's
/// `voice_prompt=NAME` (a preset's name; a `.pt`/`.wav` suffix, as NVIDIA's client sends it,
/// is dropped) and/or `text_prompt=ROLE`. Empty values count as absent.
pub fn persona(pairs: &[(String, String)]) -> Result<Option<PersonaRequest>, BadParam> {
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let bad = |name: &str, value: &str, why| BadParam {
        name: name.to_string(),
        value: value.chars().take(100).collect(),
        why,
    };
    let voice = get("voice_prompt").map(|v| {
        let stem = v.strip_suffix(".pt").or_else(|| v.strip_suffix(".wav"));
        stem.filter(|s| !s.is_empty()).unwrap_or(v).to_string()
    });
    let role = get("text_prompt").map(str::to_string);
    if let Some(r) = role
        .as_deref()
        .filter(|r| r.chars().count() > MAX_ROLE_CHARS)
    {
        return Err(bad("text_prompt", r, "at most 4000 characters"));
    }
    match (get("persona"), voice.is_some() || role.is_some()) {
        (Some(n), true) => Err(bad(
            "persona",
            n,
            "give either persona or voice_prompt/text_prompt, not both",
        )),
        (Some(n), false) => Ok(Some(PersonaRequest::Named(n.to_string()))),
        (None, true) => Ok(Some(PersonaRequest::Prompt { voice, role })),
        (None, false) => Ok(None),
    }
}

fn num<T: std::str::FromStr>(name: &str, v: &str, why: &'static str) -> Result<T, BadParam> {
    v.trim().parse::<T>().map_err(|_| BadParam {
        name: name.to_string(),
        value: v.to_string(),
        why,
    })
}

fn temperature(name: &str, v: &str) -> Result<f64, BadParam> {
    let t: f64 = num(name, v, "a number from 0 (greedy) to 10")?;
    if !(0.0..=10.0).contains(&t) {
        return Err(BadParam {
            name: name.into(),
            value: v.into(),
            why: "a number from 0 (greedy) to 10",
        });
    }
    Ok(t)
}

/// Reads the sampling parameters; unknown keys (Kyutai's `pad_mult`, `email`, ...) are ignored.
pub fn sampling(pairs: &[(String, String)]) -> Result<SessionSampling, BadParam> {
    let mut s = SessionSampling::default();
    for (k, v) in pairs {
        let int = "a whole number (0 = no top-k)";
        match k.as_str() {
            "text_temperature" => s.text_temperature = Some(temperature(k, v)?),
            "audio_temperature" => s.audio_temperature = Some(temperature(k, v)?),
            "text_topk" => s.text_topk = Some(num(k, v, int)?),
            "audio_topk" => s.audio_topk = Some(num(k, v, int)?),
            "text_seed" => s.text_seed = Some(num(k, v, "a whole number below 2^64")?),
            "audio_seed" => s.audio_seed = Some(num(k, v, "a whole number below 2^64")?),
            _ => {}
        }
    }
    Ok(s)
}

/// `/api/control`'s parameters, every one checked before any is applied (a request that is
/// half wrong changes nothing); unknown keys are ignored, as `/api/chat`'s are.
pub fn controls(pairs: &[(String, String)]) -> Result<Vec<Control>, BadParam> {
    let bad = |k: &str, v: &str, why| BadParam {
        name: k.to_string(),
        value: v.to_string(),
        why,
    };
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.push(match k.as_str() {
            // The page sends 1/0; MQTT's ON/OFF and true/false are accepted too.
            "mute" => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" => Control::Mute(true),
                "0" | "false" | "off" => Control::Mute(false),
                _ => return Err(bad(k, v, "1 or 0 (also on/off, true/false)")),
            },
            "volume" => match v.trim().parse::<u8>() {
                Ok(n) if n <= 100 => Control::Volume(n),
                _ => return Err(bad(k, v, "a whole number 0-100")),
            },
            "voice" => Control::Voice(v.clone()),
            _ => continue,
        });
    }
    Ok(out)
}

/// The access token a request carries: `?token=`, `?worker_auth_id=` (what Kyutai's web UI
/// forwards), or the `moshid_token` cookie the page sets.
pub fn token(pairs: &[(String, String)], cookie: Option<&str>) -> Option<String> {
    for want in ["token", "worker_auth_id"] {
        if let Some((_, v)) = pairs.iter().find(|(k, v)| k == want && !v.is_empty()) {
            return Some(v.clone());
        }
    }
    cookie?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == super::auth::COOKIE)
        .map(|(_, v)| decode(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        pairs(Some(s))
    }

    #[test]
    fn the_web_clients_query_parses_and_unknown_keys_are_ignored() {
        let p = q(
            "text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250\
                   &pad_mult=0&repetition_penalty_context=64&repetition_penalty=1\
                   &email=a%40b.c&image_url=x&text_seed=42",
        );
        let s = sampling(&p).unwrap();
        assert_eq!(s.text_temperature, Some(0.7));
        assert_eq!(s.text_topk, Some(25));
        assert_eq!(s.audio_temperature, Some(0.8));
        assert_eq!(s.audio_topk, Some(250));
        assert_eq!(s.text_seed, Some(42));
        assert_eq!(s.audio_seed, None);
        assert_eq!(p[7], ("email".to_string(), "a@b.c".to_string()));
    }

    #[test]
    fn values_that_do_not_parse_are_errors_naming_the_parameter() {
        for bad in [
            "text_temperature=hot",
            "audio_temperature=-1",
            "text_topk=2.5",
            "audio_topk=-3",
            "text_seed=x",
            "audio_seed=99999999999999999999999",
        ] {
            let e = sampling(&q(bad)).unwrap_err();
            assert!(bad.starts_with(&e.name), "{bad}: {e}");
        }
        assert_eq!(
            sampling(&q("text_temperature=1")).unwrap().text_temperature,
            Some(1.0)
        );
    }

    #[test]
    fn controls_parse_whole_or_not_at_all() {
        assert_eq!(
            controls(&q("mute=ON&volume=60&voice=moshika&x=1")).unwrap(),
            [
                Control::Mute(true),
                Control::Volume(60),
                Control::Voice("moshika".into())
            ]
        );
        assert_eq!(controls(&q("mute=0")).unwrap(), [Control::Mute(false)]);
        for bad in [
            "mute=yes",
            "mute=",
            "mute",
            "volume=101",
            "volume=-1",
            "mute=1&volume=x",
        ] {
            let e = controls(&q(bad)).unwrap_err();
            assert!(
                bad.rsplit('&').next().unwrap().starts_with(&e.name),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn tokens_come_from_the_query_or_the_cookie() {
        assert_eq!(token(&q("token=abc"), None).as_deref(), Some("abc"));
        assert_eq!(
            token(&q("worker_auth_id=w%2B1"), None).as_deref(),
            Some("w+1")
        );
        assert_eq!(
            token(&q("x=1"), Some("a=b; moshid_token=c%3D; z=1")).as_deref(),
            Some("c=")
        );
        assert_eq!(token(&q("token="), None), None);
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%41"), "%zzA");
    }

    #[test]
    fn a_persona_comes_by_name_or_as_nvidias_prompts_never_both() {
        assert_eq!(persona(&q("text_topk=25")).unwrap(), None);
        assert_eq!(
            persona(&q("persona=desk")).unwrap(),
            Some(PersonaRequest::Named("desk".into()))
        );
        // NVIDIA's client names the preset file: the suffix goes, the name stays.
        assert_eq!(
            persona(&q("voice_prompt=NATF2.pt&text_prompt=You+are+a+desk")).unwrap(),
            Some(PersonaRequest::Prompt {
                voice: Some("NATF2".into()),
                role: Some("You are a desk".into()),
            })
        );
        assert_eq!(
            persona(&q("voice_prompt=&text_prompt=hi")).unwrap(),
            Some(PersonaRequest::Prompt {
                voice: None,
                role: Some("hi".into()),
            })
        );
        let e = persona(&q("persona=desk&text_prompt=hi")).unwrap_err();
        assert_eq!(e.name, "persona");
        let long = format!("text_prompt={}", "a".repeat(4001));
        assert_eq!(persona(&q(&long)).unwrap_err().name, "text_prompt");
    }
}
