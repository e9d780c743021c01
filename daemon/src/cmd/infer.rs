//! `moshid infer`: run Moshi's LM offline over a WAV or a file of Mimi codes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{DeviceSpec, Dtype};
use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args as ClapArgs;
use moshid_models::lm::{estimate_memory, LmConfig, LmGen, LmModel, Sampling, AUDIO_CODEBOOKS};
use moshid_models::mimi::{Mimi, MimiConfig};
use moshid_models::tokenizer::TextTokenizer;

/// Arguments of `moshid infer`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// LM checkpoint: safetensors (PyTorch or candle layout) or GGUF.
    #[arg(long)]
    pub lm: PathBuf,
    /// JSON of the reference's lm_kwargs (default: the 7B v0.1 configuration).
    #[arg(long)]
    pub lm_config: Option<PathBuf>,
    /// Mimi weights: needed for --input (encode) and --output (decode).
    #[arg(long)]
    pub mimi: Option<PathBuf>,
    /// Mimi configuration JSON (default: the released Mimi).
    #[arg(long)]
    pub mimi_config: Option<PathBuf>,
    /// How Mimi's weights are stored on the CPU: auto or f32, f16 (arithmetic stays f32).
    #[arg(long, default_value_t = Dtype::Auto)]
    pub mimi_dtype: Dtype,
    /// SentencePiece model for --transcript (tokenizer_spm_32k_3.model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The user's audio (any WAV; resampled to 24 kHz mono).
    #[arg(
        long,
        conflicts_with = "input_codes",
        required_unless_present = "input_codes"
    )]
    pub input: Option<PathBuf>,
    /// The user's audio as Mimi codes: the JSON of `moshid codec encode`.
    #[arg(long)]
    pub input_codes: Option<PathBuf>,
    /// Moshi's voice, decoded with Mimi (24 kHz mono float WAV).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// One JSON object per step: {"step", "text", "audio"}, tokens as sampled (before delay
    /// re-alignment).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Moshi's words (needs --tokenizer).
    #[arg(long)]
    pub transcript: Option<PathBuf>,
    /// Argmax instead of sampling.
    #[arg(long, conflicts_with_all = ["temp", "temp_text", "top_k"])]
    pub greedy: bool,
    /// Audio temperature.
    #[arg(long, default_value_t = Sampling::default().temp_audio)]
    pub temp: f64,
    /// Text temperature.
    #[arg(long, default_value_t = Sampling::default().temp_text)]
    pub temp_text: f64,
    /// Top-k for text and audio.
    #[arg(long, default_value_t = Sampling::default().top_k)]
    pub top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = Sampling::default().seed)]
    pub seed: u64,
    /// Compute dtype: auto (f32 on CPU, bf16/f16 on CUDA by compute capability), f32,
    /// bf16 or f16.
    #[arg(long, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// Attention window in steps (KV cache size; default: the configuration's context).
    #[arg(long)]
    pub context: Option<usize>,
    /// PersonaPlex voice: a preset name (looked up in --voice-dir), a `.pt` preset or a WAV
    /// (normalised to -24 LUFS and Mimi-encoded; needs --mimi).
    #[arg(long)]
    pub voice_prompt: Option<String>,
    /// PersonaPlex role, e.g. "You are the front desk of the Hotel Lumen." (needs --tokenizer).
    #[arg(long)]
    pub text_prompt: Option<String>,
    /// Where --voice-prompt NAME is looked up (default: `voices/` beside --lm).
    #[arg(long)]
    pub voice_dir: Option<PathBuf>,
}

/// `--lm-config` when given, else the configuration stored in the checkpoint `weights`
/// (GGUF files moshid wrote), else the 7B default.
pub fn lm_config(path: Option<&Path>, weights: &Path) -> anyhow::Result<LmConfig> {
    Ok(LmConfig::for_checkpoint(path, weights)?)
}

/// Loads the LM after printing (stderr) and checking what weights + KV cache will take.
pub fn load_lm(
    path: &Path,
    cfg: &LmConfig,
    dtype: Dtype,
    device: &Device,
    context: usize,
) -> anyhow::Result<LmModel> {
    let dt = moshid_models::device::DeviceKind::of(device).lm_dtype(dtype.candle())?;
    let est = estimate_memory(path, cfg, dt, context)?;
    eprintln!(
        "moshid: LM memory: weights {:.2} GB + KV cache {:.2} GB (context {context} steps, {dt:?}) = {:.2} GB",
        est.weights_bytes as f64 / 1e9,
        est.kv_cache_bytes as f64 / 1e9,
        est.total() as f64 / 1e9
    );
    est.check_fits(device, context)?;
    Ok(LmModel::load(path, cfg, Some(dt), device)?)
}

#[derive(serde::Deserialize)]
struct CodesFile {
    num_codebooks: usize,
    codes: Vec<Vec<u32>>,
}

/// A line of `--trace`: the tokens sampled at one step, to compare with the reference's.
#[derive(serde::Serialize)]
struct TraceStep {
    /// The step, from 0.
    step: usize,
    /// The text token.
    text: u32,
    /// The audio tokens, one per codebook.
    audio: [u32; AUDIO_CODEBOOKS],
}

/// `--trace`: one [`TraceStep`] JSON line per step; every write error names the file.
struct Trace {
    path: PathBuf,
    w: std::io::BufWriter<std::fs::File>,
}

impl Trace {
    fn create(path: &Path) -> anyhow::Result<Trace> {
        let f = std::fs::File::create(path)
            .with_context(|| format!("--trace: cannot create {}", path.display()))?;
        Ok(Trace {
            path: path.to_path_buf(),
            w: std::io::BufWriter::new(f),
        })
    }

    fn write(&mut self, line: &TraceStep) -> anyhow::Result<()> {
        writeln!(self.w, "{}", serde_json::to_string(line)?).with_context(|| self.failed())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.w.flush().with_context(|| self.failed())
    }

    fn failed(&self) -> String {
        format!(
            "--trace: cannot write {} (is there room?)",
            self.path.display()
        )
    }
}

/// Runs the persona prompt of `--voice-prompt` / `--text-prompt` before the conversation.
fn run_persona_prompt(
    a: &Args,
    cfg: &LmConfig,
    gen: &mut LmGen,
    tokenizer: Option<&TextTokenizer>,
    mimi: Option<&mut Mimi>,
) -> anyhow::Result<()> {
    let beside = a.lm.parent().unwrap_or(Path::new(".")).join("voices");
    let spec = super::persona::PersonaSpec {
        voice: a.voice_prompt.as_deref(),
        voice_dir: a.voice_dir.as_deref().unwrap_or(&beside),
        role: a.text_prompt.as_deref(),
    };
    let p = super::persona::prompt(cfg, &spec, tokenizer, mimi)?;
    let state = gen.run_prompt(&p, |_| {})?;
    eprintln!(
        "moshid: persona prompt: {} steps in {:.2} s",
        state.steps(),
        state.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `moshid infer`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.device.open()?;
    let cfg = lm_config(a.lm_config.as_deref(), &a.lm)?;
    let dtype = a.dtype;
    if a.transcript.is_some() && a.tokenizer.is_none() {
        bail!(
            "--transcript needs --tokenizer (the SentencePiece model, tokenizer_spm_32k_3.model)"
        );
    }
    if (a.input.is_some() || a.output.is_some()) && a.mimi.is_none() {
        bail!("--input and --output need --mimi (the Mimi weights) to encode/decode audio");
    }
    let tokenizer = match &a.tokenizer {
        Some(p) => Some(TextTokenizer::from_file(p)?),
        None => None,
    };
    let mut mimi = match &a.mimi {
        Some(p) => {
            let mcfg = match &a.mimi_config {
                Some(c) => MimiConfig::from_json_file(c)?,
                None => MimiConfig::v0_1(),
            };
            let m = Mimi::load_with(p, &mcfg, 8, &device, a.mimi_dtype.mimi_weights()?)
                .with_context(|| format!("loading Mimi from {}", p.display()))?;
            if m.cardinality() != cfg.card {
                bail!(
                    "Mimi has {} codes per codebook but the LM expects {}: the two checkpoints do not belong together",
                    m.cardinality(),
                    cfg.card
                );
            }
            Some(m)
        }
        None => None,
    };
    // User codes: from the JSON, or encoded from the WAV frame by frame.
    let user: Vec<[u32; 8]> = if let Some(p) = &a.input_codes {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let f: CodesFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected {{\"num_codebooks\": 8, \"codes\": [[8 ids], ...]}} as written by `moshid codec encode`", p.display()))?;
        if f.num_codebooks < 8 {
            bail!(
                "{}: has {} codebooks, Moshi needs 8 (encode with --num-codebooks 8)",
                p.display(),
                f.num_codebooks
            );
        }
        f.codes
            .iter()
            .enumerate()
            .map(|(t, c)| {
                if c.len() != f.num_codebooks {
                    bail!(
                        "{}: frame {t} has {} codes, expected {}",
                        p.display(),
                        c.len(),
                        f.num_codebooks
                    );
                }
                Ok(std::array::from_fn(|k| c[k]))
            })
            .collect::<anyhow::Result<_>>()?
    } else if let (Some(p), Some(m)) = (&a.input, mimi.as_mut()) {
        let pcm = moshid_hal::wav::read_mono_24k(p)?;
        let n = m.frame_samples();
        let mut frame = vec![0f32; n];
        let mut codes = [0u32; 8];
        let mut out = Vec::with_capacity(pcm.len() / n + 1);
        for chunk in pcm.chunks(n) {
            frame[..chunk.len()].copy_from_slice(chunk);
            frame[chunk.len()..].fill(0.0);
            m.encode_step(&frame, &mut codes)?;
            out.push(codes);
        }
        m.reset();
        out
    } else {
        bail!("give --input IN.wav or --input-codes IN.json");
    };
    if user.is_empty() {
        bail!("the input has no frames");
    }
    let context = a.context.unwrap_or(cfg.context);
    let sampling = Sampling {
        temp_text: a.temp_text,
        temp_audio: a.temp,
        top_k: a.top_k,
        greedy: a.greedy,
        seed: a.seed,
    };
    // The one range check (LmGen::new makes it too), before minutes of loading.
    sampling.validate()?;
    let model = load_lm(&a.lm, &cfg, dtype, &device, context)?;
    let mut gen = LmGen::new(model, sampling, context)?;
    if a.voice_prompt.is_some() || a.text_prompt.is_some() {
        run_persona_prompt(&a, &cfg, &mut gen, tokenizer.as_ref(), mimi.as_mut())?;
    }
    let mut trace = a.trace.as_deref().map(Trace::create).transpose()?;
    let mut stream = tokenizer.as_ref().map(|t| t.stream());
    let mut words = String::new();
    let frame_n = mimi.as_ref().map(|m| m.frame_samples()).unwrap_or(0);
    let mut pcm_out: Vec<f32> = Vec::new();
    let mut frame = vec![0f32; frame_n];
    let started = std::time::Instant::now();
    for (t, c) in user.iter().enumerate() {
        let out = gen.step(c).with_context(|| format!("step {t}"))?;
        let (text, audio) = gen.last_sampled();
        if let Some(w) = trace.as_mut() {
            w.write(&TraceStep {
                step: t,
                text,
                audio,
            })?;
        }
        if let Some(o) = out {
            if let Some(s) = stream.as_mut() {
                s.push(o.text, &mut words);
            }
            if let (Some(m), true) = (mimi.as_mut(), a.output.is_some()) {
                m.decode_step(&o.audio, &mut frame)?;
                pcm_out.extend_from_slice(&frame);
            }
        }
    }
    if let Some(s) = stream.as_mut() {
        s.finish(&mut words);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "moshid: {} steps in {secs:.2} s ({:.1} ms/step, real time is 80 ms/step)",
        user.len(),
        1000.0 * secs / user.len() as f64
    );
    if let Some(w) = trace {
        w.finish()?;
    }
    if let Some(p) = &a.transcript {
        std::fs::write(p, format!("{words}\n"))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.output {
        moshid_hal::wav::write_mono_f32(p, &pcm_out, 24_000)?;
    }
    Ok(())
}
