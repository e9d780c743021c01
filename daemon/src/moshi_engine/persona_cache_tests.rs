//! Personas per conversation on one model: two sessions with two personas and one without
//! share the hub's steps, and each gets exactly what a batch of one prompted with that
//! persona (the `model.persona` path) gives.

use super::*;
use crate::config::{Config, DeviceSpec};
use crate::engine::{Engine, JoinRequest};
use crate::hub::{Hub, Timing};
use moshid_hal::FRAME_SAMPLES;
use std::time::Duration;

/// The demo model with a random PersonaPlex-shaped LM (dep_q 16) and two personas: `desk`
/// (the Mimi fixture's speech as voice, a role) and `guide` (a role only). Greedy.
fn rig(dir: &std::path::Path) -> (ModelSpec, Config) {
    let (spec, wav) = super::super::tests::personaplex_demo(dir);
    let toml = format!(
        "cache_dir = {:?}\n[model]\ncontext = 64\n[sampling]\ngreedy = true\n\
         [personas.desk]\nvoice_prompt = {:?}\nrole = \"hello kitchen lights\"\n\
         [personas.guide]\nrole = \"welcome to the museum of old radios\"\n",
        dir.display().to_string(),
        wav.display().to_string()
    );
    let mut cfg = Config::from_toml(&toml, std::path::Path::new("test.toml")).unwrap();
    cfg.model.device = DeviceSpec::Cpu;
    (spec, cfg)
}

/// Rounds that wait for every active conversation (all share each step).
fn hub(batch: super::super::MoshiBatch) -> Hub {
    let wait = Duration::from_secs(10);
    let timing = Timing {
        period: wait,
        gather: wait,
    };
    Hub::start(Box::new(batch), timing).unwrap()
}

/// Six frames of a tone into `e`: each output sample's bits, and the text.
fn talk(e: &mut dyn Engine) -> (Vec<u32>, String) {
    let (mut audio, mut text) = (Vec::new(), String::new());
    let mut out = vec![f32::NAN; FRAME_SAMPLES];
    for t in 0..6 {
        let input: Vec<f32> = (0..FRAME_SAMPLES)
            .map(|i| ((i + t * 7) as f32 * 0.01).sin() * 0.1)
            .collect();
        e.step(&input, &mut out, &mut text).unwrap();
        audio.extend(out.iter().map(|v| v.to_bits()));
    }
    (audio, text)
}

/// What a model prompted at load with `persona` (None: no persona) says, alone.
fn alone(spec: &ModelSpec, cfg: &Config, persona: Option<&str>) -> (Vec<u32>, String) {
    let mut cfg = cfg.clone();
    cfg.model.persona = persona.map(str::to_string);
    let h = hub(super::super::load_batch(spec, &cfg, 1).unwrap());
    let mut c = h.join(JoinRequest::default()).unwrap();
    talk(&mut c)
}

#[test]
fn each_conversation_starts_from_its_own_persona_on_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, cfg) = rig(dir.path());
    let (batch, cache) = super::super::load_batch_with_personas(&spec, &cfg, 3).unwrap();
    assert_eq!(cache.names(), ["desk", "guide"]);
    let named = |n: &str| PersonaRequest::Named(n.into());
    let desk = cache.get(&named("desk")).unwrap();
    let guide = cache.get(&named("guide")).unwrap();
    // Computed once: the second ask shares the first state.
    assert!(Arc::ptr_eq(
        &cache.get(&named("desk")).unwrap().state,
        &desk.state
    ));
    let h = hub(batch);
    let join = |p: Option<&Persona>| {
        let r = JoinRequest {
            persona: p.cloned(),
            ..JoinRequest::default()
        };
        h.join(r).unwrap()
    };
    let convs = vec![join(Some(&desk)), join(Some(&guide)), join(None)];
    let together: Vec<_> = convs
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let first = talk(&mut c);
                // A reset starts that slot from its own persona again.
                c.reset();
                (first, talk(&mut c))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (who, (first, again)) in ["desk", "guide", "none"].iter().zip(&together) {
        assert!(first == again, "{who}: a reset changed the conversation");
    }
    let (d, g, n) = (&together[0].0, &together[1].0, &together[2].0);
    assert!(
        d.0 != n.0 && g.0 != n.0 && d.0 != g.0,
        "the personas change the output"
    );
    assert!(
        *d == alone(&spec, &cfg, Some("desk")),
        "desk differs from desk alone"
    );
    assert!(
        *g == alone(&spec, &cfg, Some("guide")),
        "guide differs from guide alone"
    );
    assert!(
        *n == alone(&spec, &cfg, None),
        "no persona differs from alone"
    );
}

#[test]
fn what_cannot_be_served_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, cfg) = rig(dir.path());
    let (_batch, cache) = super::super::load_batch_with_personas(&spec, &cfg, 1).unwrap();
    let e = cache
        .get(&PersonaRequest::Named("pirate".into()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("configured: desk, guide"), "{e}");
    for v in ["../secret", "/etc/passwd", ".hidden"] {
        let r = PersonaRequest::Prompt {
            voice: Some(v.into()),
            role: None,
        };
        let e = cache.get(&r).err().unwrap();
        assert!(matches!(e, PersonaError::VoicePath(_)), "{v}: {e}");
    }
    // A preset that is not there names where it looked.
    let r = PersonaRequest::Prompt {
        voice: Some("NATF2".into()),
        role: Some("hi".into()),
    };
    let e = cache.get(&r).err().unwrap().to_string();
    assert!(e.contains("NATF2") && e.contains("voices"), "{e}");
    // A session's own role works without any configuration.
    let r = PersonaRequest::Prompt {
        voice: None,
        role: Some("you sell umbrellas".into()),
    };
    assert!(cache.get(&r).unwrap().state.steps() > 0);
    // A Moshi model takes no persona.
    let moshi = crate::demo_model::ensure(dir.path(), "moshiko").unwrap();
    let (_b, moshi_cache) = super::super::load_batch_with_personas(&moshi, &cfg, 1).unwrap();
    assert!(moshi_cache.names().is_empty());
    let e = moshi_cache.get(&PersonaRequest::Named("desk".into())).err();
    assert!(matches!(e, Some(PersonaError::NotPersonaPlex)), "{e:?}");
}
