//! WAV files in and out: any common WAV becomes 24 kHz mono f32.

use crate::{resample::resample_clip, HalError, MODEL_RATE};
use std::path::Path;

fn wav_err(path: &Path, e: hound::Error) -> HalError {
    let reason = match e {
        // hound reports a short data chunk as ErrorKind::Other with this text.
        hound::Error::IoError(io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof
                || io.to_string().contains("read enough bytes") =>
        {
            "truncated WAV: the file ends before the length its header declares; \
             re-record or re-export it"
                .to_string()
        }
        hound::Error::IoError(io) => {
            return HalError::Io {
                path: path.to_path_buf(),
                error: io,
            }
        }
        hound::Error::FormatError(what) => format!(
            "not a valid WAV file ({what}); convert it, e.g. `sox IN -e signed -b 16 OUT.wav`"
        ),
        hound::Error::Unsupported => "unsupported WAV encoding (only PCM integer 8/16/24/32-bit \
             and 32-bit float are read); convert it with sox or ffmpeg"
            .to_string(),
        other => format!("unreadable WAV: {other}"),
    };
    HalError::Wav {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads a WAV file of any rate, channel count and sample format (integer 8/16/24/32-bit or
/// 32-bit float), averages the channels and resamples to 24 kHz mono f32 in [-1, 1].
pub fn read_mono_24k(path: &Path) -> Result<Vec<f32>, HalError> {
    let (samples, rate) = read_mono(path)?;
    resample_clip(&samples, rate, MODEL_RATE)
}

/// Reads a WAV file as mono f32 (mean of its channels) at its own rate; returns the rate.
pub fn read_mono(path: &Path) -> Result<(Vec<f32>, u32), HalError> {
    let (interleaved, channels, rate) = read_interleaved(path)?;
    let mono = if channels == 1 {
        interleaved
    } else {
        let scale = 1.0 / channels as f32;
        interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() * scale)
            .collect()
    };
    Ok((mono, rate))
}

/// Lowest sample rate a WAV file may declare: below it the header is damaged, not audio.
pub const MIN_FILE_RATE: u32 = 4_000;
/// Highest sample rate a WAV file may declare (studio formats stop at 384 kHz).
pub const MAX_FILE_RATE: u32 = 384_000;

/// Reads a WAV file as interleaved f32 in [-1, 1]; returns (samples, channels, rate).
/// Refuses headers outside audio (rates outside 4-384 kHz, no channels) and float samples
/// that are NaN or infinite, naming where the first one is.
pub fn read_interleaved(path: &Path) -> Result<(Vec<f32>, usize, u32), HalError> {
    let file = std::fs::File::open(path).map_err(|e| wav_err(path, hound::Error::IoError(e)))?;
    read_interleaved_from(std::io::BufReader::new(file), path)
}

/// [`read_interleaved`] from any reader; `path` names it in errors.
pub fn read_interleaved_from(
    r: impl std::io::Read,
    path: &Path,
) -> Result<(Vec<f32>, usize, u32), HalError> {
    let reader = hound::WavReader::new(r).map_err(|e| wav_err(path, e))?;
    let spec = reader.spec();
    if spec.channels == 0 || !(MIN_FILE_RATE..=MAX_FILE_RATE).contains(&spec.sample_rate) {
        return Err(HalError::Wav {
            path: path.to_path_buf(),
            reason: format!(
                "header declares {} channels at {} Hz (audio is 1 or more channels at {MIN_FILE_RATE}..={MAX_FILE_RATE} Hz); the file is damaged or not audio",
                spec.channels, spec.sample_rate
            ),
        });
    }
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(HalError::Wav {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{}-bit float WAV is not supported (only 32-bit float); convert it \
                         with `sox IN -e floating-point -b 32 OUT.wav`",
                        spec.bits_per_sample
                    ),
                });
            }
            let v: Vec<f32> = reader
                .into_samples::<f32>()
                .collect::<Result<_, _>>()
                .map_err(|e| wav_err(path, e))?;
            if let Some(i) = v.iter().position(|&x| crate::resample::unusable(x)) {
                let ch = spec.channels as usize;
                return Err(HalError::Wav {
                    path: path.to_path_buf(),
                    reason: format!(
                        "sample {} (channel {}, at {:.3} s) is {}: a float WAV must hold finite numbers near [-1, 1]; the file is damaged",
                        i / ch,
                        i % ch,
                        (i / ch) as f64 / spec.sample_rate as f64,
                        v[i]
                    ),
                });
            }
            v
        }
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                return Err(wav_err(path, hound::Error::Unsupported));
            }
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| wav_err(path, e))?
        }
    };
    let channels = spec.channels as usize;
    if !samples.len().is_multiple_of(channels) {
        return Err(HalError::Wav {
            path: path.to_path_buf(),
            reason: "truncated WAV: the last frame is incomplete; re-record or re-export it"
                .to_string(),
        });
    }
    Ok((samples, channels, spec.sample_rate))
}

/// Writes mono samples as a 32-bit float WAV at `rate` Hz.
pub fn write_mono_f32(path: &Path, samples: &[f32], rate: u32) -> Result<(), HalError> {
    write_f32(path, samples, 1, rate)
}

/// Writes interleaved samples with `channels` channels as a 32-bit float WAV at `rate` Hz.
pub fn write_f32(path: &Path, samples: &[f32], channels: u16, rate: u32) -> Result<(), HalError> {
    if channels == 0 || rate == 0 {
        return Err(HalError::Config(format!(
            "cannot write {}: {channels} channels at {rate} Hz",
            path.display()
        )));
    }
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| wav_err(path, e))?;
    for &s in samples {
        w.write_sample(s).map_err(|e| wav_err(path, e))?;
    }
    w.finalize().map_err(|e| wav_err(path, e))
}
