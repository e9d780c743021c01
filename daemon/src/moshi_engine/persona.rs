//! PersonaPlex prompts: `model.persona` and the `[personas]` a conversation asks for, run once
//! (or read back from `cache_dir/personas/`) and kept so that every conversation starts from a
//! copy; and a session's own prompt (`/api/chat?voice_prompt=&text_prompt=`).

use std::path::Path;

use anyhow::Context;
use moshid_models::lm::{LmGen, PersonaPrompt, PromptedState};
use moshid_models::mimi::Mimi;
use moshid_models::tokenizer::TextTokenizer;

use crate::cmd::persona::{prompt, PersonaSpec};
use crate::config::Config;
use crate::model_spec::ModelSpec;

/// The prompted state of `cfg.model.persona` (None without one), with `gen` left in it.
pub(super) fn prompted(
    spec: &ModelSpec,
    cfg: &Config,
    gen: &mut LmGen,
    tokenizer: &TextTokenizer,
    mimi: &mut Mimi,
) -> anyhow::Result<Option<PromptedState>> {
    let Some(name) = &cfg.model.persona else {
        return Ok(None);
    };
    named(spec, cfg, name, gen, tokenizer, mimi).map(Some)
}

/// The prompted state of `[personas.NAME]`: read from `cache_dir/personas/NAME.state` when
/// its key still matches, else prompted (and kept there), with `gen` left in it.
pub(super) fn named(
    spec: &ModelSpec,
    cfg: &Config,
    name: &str,
    gen: &mut LmGen,
    tokenizer: &TextTokenizer,
    mimi: &mut Mimi,
) -> anyhow::Result<PromptedState> {
    let persona = cfg
        .personas
        .get(name)
        .with_context(|| format!("`model.persona` = {name:?}: no such [personas] entry"))?;
    let voices = spec.lm.parent().unwrap_or(Path::new(".")).join("voices");
    let what = PersonaSpec {
        voice: persona.voice_prompt.as_deref(),
        voice_dir: &voices,
        role: Some(&persona.role),
    };
    let p = prompt(&spec.lm_config, &what, Some(tokenizer), Some(mimi))
        .with_context(|| format!("persona {name}"))?;
    let key = cache_key(spec, cfg, &p);
    let file = cfg.cache_dir.join("personas").join(format!("{name}.state"));
    if let Some(s) = from_disk(&file, &key, gen) {
        log::info!(
            "persona {name}: prompted state read from {}",
            file.display()
        );
        return Ok(s);
    }
    let s = gen
        .run_prompt(&p, |_| {})
        .with_context(|| format!("persona {name}: running the prompt"))?;
    log::info!(
        "persona {name}: first use, the prompt ({} steps) took {:.1} s; kept in {} ({:.0} MB)",
        s.steps(),
        s.elapsed().as_secs_f64(),
        file.display(),
        s.bytes() as f64 / 1e6
    );
    let saved = std::fs::create_dir_all(cfg.cache_dir.join("personas"))
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(s.save(&file, &key)?));
    if let Err(e) = saved {
        log::warn!(
            "persona {name}: not cached on disk ({e:#}); it is prompted again at the next start"
        );
    }
    Ok(s)
}

/// The prompted state of a session's own prompt (`voice_prompt`: a preset name under the
/// model's `voices` folder; `text_prompt`: the role), kept in memory only by the caller.
pub(super) fn adhoc(
    spec: &ModelSpec,
    voice: Option<&str>,
    role: Option<&str>,
    gen: &mut LmGen,
    tokenizer: &TextTokenizer,
    mimi: &mut Mimi,
) -> anyhow::Result<PromptedState> {
    let voices = spec.lm.parent().unwrap_or(Path::new(".")).join("voices");
    let what = PersonaSpec {
        voice,
        voice_dir: &voices,
        role,
    };
    let p = prompt(&spec.lm_config, &what, Some(tokenizer), Some(mimi))?;
    let s = gen.run_prompt(&p, |_| {}).context("running the prompt")?;
    log::info!(
        "session prompt (voice {voice:?}): {} steps took {:.1} s; kept in memory",
        s.steps(),
        s.elapsed().as_secs_f64()
    );
    Ok(s)
}

/// A state saved under `key`, restored into `gen`; None when absent, stale or unreadable
/// (then the prompt runs again and replaces it).
fn from_disk(file: &Path, key: &str, gen: &mut LmGen) -> Option<PromptedState> {
    if !file.exists() {
        return None;
    }
    match PromptedState::load(file, key, gen.model().device()) {
        Ok(Some(s)) => match gen.restore_prompted(&s) {
            Ok(()) => Some(s),
            Err(e) => {
                log::warn!("{}: {e}; prompting again", file.display());
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            log::warn!("{e}; prompting again");
            None
        }
    }
}

/// What the state depends on: the weights (path, size, modification time), how they are run
/// (context, dtype, device) and the prompt's contents.
fn cache_key(spec: &ModelSpec, cfg: &Config, p: &PersonaPrompt) -> String {
    let meta = std::fs::metadata(&spec.lm).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "moshid-persona-v1|{}|{len}|{mtime}|{}|{:?}|{:?}|{}",
        spec.lm.display(),
        cfg.model.context,
        cfg.model.dtype,
        cfg.model.device,
        p.fingerprint()
    )
}
