//! `moshid wake`: run a wake-word model (microWakeWord, in `moshid_models::wake`) over a WAV
//! file; one JSON line per detection, or per inference with `--probabilities`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use moshid_models::wake::{Detector, Inference, WakeModel};
use serde::Serialize;

use super::procstat;

/// Arguments of `moshid wake`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A built-in model (okay_nabu, hey_jarvis, alexa, hey_mycroft) or a `.tflite` file.
    #[arg(long, default_value = "okay_nabu")]
    pub model: String,
    /// The model's JSON configuration (default for a file: the `.json` beside it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print every inference (every 30 ms of audio), not only the detections.
    #[arg(long)]
    pub probabilities: bool,
    /// Detection cutoff in (0, 1), instead of the model's `probability_cutoff`.
    #[arg(long, value_parser = cutoff)]
    pub cutoff: Option<f64>,
    /// End with a line of figures: audio length, time the detector took, share of one core.
    #[arg(long)]
    pub stats: bool,
    /// Input WAV: any rate, channel count and sample format (mixed to mono, resampled to 16 kHz).
    pub input: PathBuf,
}

/// Parses a cutoff: a probability strictly between 0 and 1.
pub fn cutoff(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(v > 0.0 && v < 1.0) {
        return Err(format!("{v}: use a probability in (0, 1)"));
    }
    Ok(v)
}

/// Loads a model: a built-in name, or a `.tflite` path with its JSON (`json`, or the file's
/// `.json` sibling).
pub fn load_model(spec: &str, json: Option<&Path>) -> anyhow::Result<WakeModel> {
    let path = Path::new(spec);
    let is_file = path.extension().is_some_and(|e| e == "tflite") || spec.contains('/');
    if !is_file {
        anyhow::ensure!(
            json.is_none(),
            "--json goes with a .tflite file, not a built-in model"
        );
        return Ok(WakeModel::builtin(spec)?);
    }
    let json_path = json.map_or_else(|| path.with_extension("json"), Path::to_path_buf);
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let config = std::fs::read_to_string(&json_path)
        .with_context(|| format!("reading the model's configuration {}", json_path.display()))?;
    let name = path
        .file_stem()
        .map_or_else(|| spec.to_string(), |s| s.to_string_lossy().into_owned());
    WakeModel::from_bytes(&name, &bytes, &config)
        .with_context(|| format!("loading {}", path.display()))
}

/// One detection (the first inference of a run whose window mean is above the cutoff).
#[derive(Serialize)]
struct DetectionLine<'a> {
    event: &'static str,
    wake_word: &'a str,
    /// End of the audio heard when it fired, seconds from the start of the file.
    time_s: f64,
    /// The window mean that crossed the cutoff.
    probability: f64,
}

/// One inference (`--probabilities`).
#[derive(Serialize)]
struct InferenceLine {
    event: &'static str,
    index: u64,
    time_s: f64,
    /// This inference's probability.
    probability: f32,
    /// Mean over the sliding window (0 until it is full).
    mean: f64,
    detection: bool,
}

/// The figures line (`--stats`).
#[derive(Serialize)]
struct StatsLine<'a> {
    event: &'static str,
    model: &'a str,
    cutoff: f64,
    audio_s: f64,
    inferences: u64,
    detections: u64,
    /// Wall time of the frontend + model over the whole file (one thread).
    detector_ms: f64,
    /// Process CPU time over the same span.
    cpu_ms: f64,
    /// CPU time per second of audio, as a share of one core.
    core_percent: f64,
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Runs `moshid wake`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let model = load_model(&a.model, a.json.as_deref())?;
    let samples = read_16k(&a.input)?;
    let mut det = Detector::new(&model)?;
    if let Some(c) = a.cutoff {
        det.set_cutoff(c);
    }
    let mut infs: Vec<Inference> = Vec::with_capacity(samples.len() / 480 + 1);
    let (t0, c0) = (Instant::now(), procstat::cpu_ms());
    det.push_samples(&samples, |i| infs.push(*i))?;
    let (wall_ms, cpu_ms) = (t0.elapsed().as_secs_f64() * 1e3, procstat::cpu_ms() - c0);
    for i in &infs {
        if a.probabilities {
            print_json(&InferenceLine {
                event: "inference",
                index: i.index,
                time_s: i.time_s,
                probability: i.probability,
                mean: i.mean,
                detection: i.detection,
            })?;
        }
        if i.detection {
            print_json(&DetectionLine {
                event: "detection",
                wake_word: &model.config.wake_word,
                time_s: i.time_s,
                probability: i.mean,
            })?;
        }
    }
    if a.stats {
        let audio_s = samples.len() as f64 / 16_000.0;
        print_json(&StatsLine {
            event: "stats",
            model: &model.name,
            cutoff: det.cutoff(),
            audio_s,
            inferences: infs.len() as u64,
            detections: infs.iter().filter(|i| i.detection).count() as u64,
            detector_ms: wall_ms,
            cpu_ms,
            core_percent: if audio_s > 0.0 {
                cpu_ms / 10.0 / audio_s
            } else {
                0.0
            },
        })?;
    }
    Ok(())
}

/// Reads any WAV as 16 kHz 16-bit mono (a 16 kHz 16-bit file's samples come back exactly).
fn read_16k(path: &Path) -> anyhow::Result<Vec<i16>> {
    let (mono, rate) = moshid_hal::wav::read_mono(path)?;
    let pcm = moshid_hal::resample::resample_clip(&mono, rate, 16_000)?;
    Ok(pcm
        .iter()
        .map(|&x| (x * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16)
        .collect())
}
