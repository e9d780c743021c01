//! ALSA backend (the `alsa` crate over alsa-lib).

use crate::device::{CaptureDevice, DeviceError, DeviceParams, PlaybackDevice, SampleFormat};
use crate::HalError;
use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

/// One ALSA PCM known to alsa-lib (from its name hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The PCM name to pass as `--capture`/`--playback`.
    pub name: String,
    /// alsa-lib's description, first line.
    pub description: String,
    /// Usable for capture.
    pub capture: bool,
    /// Usable for playback.
    pub playback: bool,
}

/// Lists the PCMs alsa-lib advertises (cards, plugins and `hint`-ed user PCMs).
pub fn list_devices() -> Result<Vec<DeviceInfo>, HalError> {
    let hints =
        alsa::device_name::HintIter::new_str(None, "pcm").map_err(|e| HalError::Device {
            device: "*".into(),
            reason: format!("alsa-lib cannot list PCMs ({e}); check the ALSA configuration"),
        })?;
    Ok(hints
        .filter_map(|h| {
            let name = h.name?;
            let description = h
                .desc
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let (capture, playback) = match h.direction {
                None => (true, true),
                Some(Direction::Capture) => (true, false),
                Some(Direction::Playback) => (false, true),
            };
            Some(DeviceInfo {
                name,
                description,
                capture,
                playback,
            })
        })
        .collect())
}

/// Opening failed: name the device, say why, and list what exists.
fn open_error(name: &str, dir: Direction, e: alsa::Error) -> HalError {
    let want_capture = dir == Direction::Capture;
    let existing: Vec<String> = list_devices()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| if want_capture { d.capture } else { d.playback })
        .map(|d| d.name)
        .collect();
    let what = if want_capture { "capture" } else { "playback" };
    HalError::Device {
        device: name.to_string(),
        reason: format!(
            "cannot open for {what} ({e}); available {what} PCMs: {}; see `moshid audio list`",
            if existing.is_empty() {
                "none".to_string()
            } else {
                existing.join(", ")
            }
        ),
    }
}

/// What the caller asks of an ALSA PCM.
#[derive(Debug, Clone)]
pub struct AlsaRequest<'a> {
    /// PCM name, e.g. `hw:1,0`, `plughw:CARD=Array`, `default`.
    pub device: &'a str,
    /// Frames per second.
    pub rate: u32,
    /// Channels.
    pub channels: usize,
    /// Sample format.
    pub format: SampleFormat,
    /// Period size in frames (a request; the device rounds).
    pub period_frames: usize,
    /// Buffer size in frames (a request; the device rounds).
    pub buffer_frames: usize,
}

enum Scratch {
    S16(Vec<i16>),
    S32(Vec<i32>),
    F32(Vec<f32>),
}

/// A configured PCM plus a raw sample buffer (allocated once).
struct Pcm {
    pcm: PCM,
    params: DeviceParams,
    scratch: Scratch,
    name: String,
    /// The error behind the last [`DeviceError::Xrun`], handed to `snd_pcm_recover`.
    pending: Option<alsa::Error>,
}

/// Configuration failed: name the device and suggest a converting PCM.
fn cfg_err(device: &str, what: &str, e: alsa::Error) -> HalError {
    HalError::Device {
        device: device.to_string(),
        reason: format!(
            "{what} not supported ({e}); try a `plughw:` or `plug` PCM, which converts"
        ),
    }
}

/// Sets the hardware parameters and reads back what the device agreed to.
fn set_hw_params(pcm: &PCM, req: &AlsaRequest) -> Result<DeviceParams, HalError> {
    let err = |what: &str, e| cfg_err(req.device, what, e);
    let hw = HwParams::any(pcm).map_err(|e| err("hardware parameters", e))?;
    hw.set_access(Access::RWInterleaved)
        .map_err(|e| err("interleaved access", e))?;
    let fmt = match req.format {
        SampleFormat::S16 => Format::s16(),
        SampleFormat::S32 => Format::s32(),
        SampleFormat::F32 => Format::float(),
    };
    hw.set_format(fmt)
        .map_err(|e| err(&format!("format {:?}", req.format), e))?;
    hw.set_channels(req.channels as u32)
        .map_err(|e| err(&format!("{} channels", req.channels), e))?;
    hw.set_rate(req.rate, ValueOr::Nearest)
        .map_err(|e| err(&format!("rate {} Hz", req.rate), e))?;
    hw.set_period_size_near(req.period_frames as alsa::pcm::Frames, ValueOr::Nearest)
        .map_err(|e| err(&format!("period of {} frames", req.period_frames), e))?;
    hw.set_buffer_size_near(req.buffer_frames as alsa::pcm::Frames)
        .map_err(|e| err(&format!("buffer of {} frames", req.buffer_frames), e))?;
    pcm.hw_params(&hw)
        .map_err(|e| err("these parameters together", e))?;
    let cur = pcm
        .hw_params_current()
        .map_err(|e| err("reading parameters", e))?;
    Ok(DeviceParams {
        rate: cur.get_rate().map_err(|e| err("rate", e))?,
        channels: cur.get_channels().map_err(|e| err("channels", e))? as usize,
        format: req.format,
        period_frames: cur.get_period_size().map_err(|e| err("period", e))? as usize,
        buffer_frames: cur.get_buffer_size().map_err(|e| err("buffer", e))? as usize,
    })
}

/// Software parameters as `aplay`/`arecord` set them: wake up once a period is ready;
/// playback starts when the buffer is full (no underrun right after start), capture on the
/// first read.
fn set_sw_params(pcm: &PCM, dir: Direction, p: &DeviceParams, name: &str) -> Result<(), HalError> {
    let err = |what: &str, e| cfg_err(name, what, e);
    let sw = pcm
        .sw_params_current()
        .map_err(|e| err("software parameters", e))?;
    sw.set_avail_min(p.period_frames as alsa::pcm::Frames)
        .map_err(|e| err("avail_min", e))?;
    let start = match dir {
        Direction::Playback => p.buffer_frames,
        Direction::Capture => 1,
    };
    sw.set_start_threshold(start as alsa::pcm::Frames)
        .map_err(|e| err("start threshold", e))?;
    pcm.sw_params(&sw)
        .map_err(|e| err("these software parameters", e))
}

/// What a failed read or write means.
fn classify(e: alsa::Error, pending: &mut Option<alsa::Error>, name: &str) -> DeviceError {
    match e.errno() {
        libc::EPIPE | libc::ESTRPIPE => {
            // Overrun/underrun or suspend: alsa-lib's own recovery brings the PCM back.
            *pending = Some(e);
            DeviceError::Xrun
        }
        _ => DeviceError::Lost(format!("{name}: {e}")),
    }
}

/// Interrupted or not ready yet: nothing is wrong, the caller just tries again.
fn is_retry(e: &alsa::Error) -> bool {
    matches!(e.errno(), libc::EAGAIN | libc::EINTR)
}

impl Pcm {
    fn open(req: &AlsaRequest, dir: Direction) -> Result<Self, HalError> {
        let pcm = PCM::new(req.device, dir, false).map_err(|e| open_error(req.device, dir, e))?;
        let params = set_hw_params(&pcm, req)?;
        set_sw_params(&pcm, dir, &params, req.device)?;
        let n = params.period_frames * params.channels;
        let scratch = match params.format {
            SampleFormat::S16 => Scratch::S16(vec![0; n]),
            SampleFormat::S32 => Scratch::S32(vec![0; n]),
            SampleFormat::F32 => Scratch::F32(vec![0.0; n]),
        };
        Ok(Self {
            pcm,
            params,
            scratch,
            name: req.device.to_string(),
            pending: None,
        })
    }

    /// Turns an I/O result into frames done: 0 for a retry, an error for the rest.
    fn outcome(&mut self, r: alsa::Result<usize>) -> Result<usize, DeviceError> {
        match r {
            Ok(n) => Ok(n),
            Err(e) if is_retry(&e) => Ok(0),
            Err(e) => Err(classify(e, &mut self.pending, &self.name)),
        }
    }

    fn read(&mut self, buf: &mut [f32]) -> Result<usize, DeviceError> {
        let ch = self.params.channels;
        let n = (buf.len() / ch).min(self.params.period_frames) * ch;
        let (pcm, scratch) = (&self.pcm, &mut self.scratch);
        let r = match scratch {
            Scratch::S16(s) => read_scaled(pcm.io_i16(), &mut s[..n], buf, ch, 1.0 / 32768.0),
            Scratch::S32(s) => {
                read_scaled(pcm.io_i32(), &mut s[..n], buf, ch, 1.0 / 2_147_483_648.0)
            }
            Scratch::F32(s) => read_scaled(pcm.io_f32(), &mut s[..n], buf, ch, 1.0),
        };
        self.outcome(r)
    }

    fn write(&mut self, buf: &[f32]) -> Result<usize, DeviceError> {
        let ch = self.params.channels;
        let n = (buf.len() / ch).min(self.params.period_frames) * ch;
        let r = match &mut self.scratch {
            Scratch::S16(s) => {
                for (o, &v) in s.iter_mut().zip(&buf[..n]) {
                    *o = (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                }
                self.pcm.io_i16().and_then(|io| io.writei(&s[..n]))
            }
            Scratch::S32(s) => {
                for (o, &v) in s.iter_mut().zip(&buf[..n]) {
                    *o = (v as f64 * 2_147_483_648.0)
                        .round()
                        .clamp(-2_147_483_648.0, 2_147_483_647.0) as i32;
                }
                self.pcm.io_i32().and_then(|io| io.writei(&s[..n]))
            }
            Scratch::F32(s) => {
                s[..n].copy_from_slice(&buf[..n]);
                self.pcm.io_f32().and_then(|io| io.writei(&s[..n]))
            }
        };
        self.outcome(r)
    }

    /// `snd_pcm_recover` on the error that caused the xrun (EPIPE: prepare; ESTRPIPE:
    /// resume, else prepare).
    fn recover(&mut self) -> Result<(), DeviceError> {
        let Some(e) = self.pending.take() else {
            return self.pcm.prepare().map_err(|e| self.lost("restart", e));
        };
        self.pcm
            .try_recover(e, true)
            .map_err(|e| self.lost("recover after xrun", e))
    }

    fn lost(&self, what: &str, e: alsa::Error) -> DeviceError {
        DeviceError::Lost(format!("{}: cannot {what}: {e}", self.name))
    }
}

/// Reads interleaved samples of one type and converts them to f32 with `scale`.
fn read_scaled<T: Copy + Into<f64>>(
    io: alsa::Result<alsa::pcm::IO<'_, T>>,
    raw: &mut [T],
    out: &mut [f32],
    ch: usize,
    scale: f64,
) -> alsa::Result<usize> {
    let frames = io?.readi(raw)?;
    for (o, &v) in out.iter_mut().zip(&raw[..frames * ch]) {
        *o = (v.into() * scale) as f32;
    }
    Ok(frames)
}

/// An ALSA capture PCM.
pub struct AlsaCapture(Pcm);

impl AlsaCapture {
    /// Opens and configures a capture PCM; the error names the device and lists what exists.
    pub fn open(req: &AlsaRequest) -> Result<Self, HalError> {
        let p = Pcm::open(req, Direction::Capture)?;
        p.pcm.start().map_err(|e| HalError::Device {
            device: req.device.to_string(),
            reason: format!("cannot start capture ({e})"),
        })?;
        Ok(Self(p))
    }
}

impl CaptureDevice for AlsaCapture {
    fn params(&self) -> &DeviceParams {
        &self.0.params
    }
    fn read(&mut self, buf: &mut [f32]) -> Result<usize, DeviceError> {
        self.0.read(buf)
    }
    fn recover(&mut self) -> Result<(), DeviceError> {
        self.0.recover()?;
        self.0
            .pcm
            .start()
            .map_err(|e| self.0.lost("restart capture", e))
    }
}

/// An ALSA playback PCM.
pub struct AlsaPlayback(Pcm);

impl AlsaPlayback {
    /// Opens and configures a playback PCM; the error names the device and lists what exists.
    pub fn open(req: &AlsaRequest) -> Result<Self, HalError> {
        Ok(Self(Pcm::open(req, Direction::Playback)?))
    }
}

impl PlaybackDevice for AlsaPlayback {
    fn params(&self) -> &DeviceParams {
        &self.0.params
    }
    fn write(&mut self, buf: &[f32]) -> Result<usize, DeviceError> {
        self.0.write(buf)
    }
    fn recover(&mut self) -> Result<(), DeviceError> {
        self.0.recover()
    }
    fn finish(&mut self) -> Result<(), DeviceError> {
        // drain() fails on a PCM that never started (nothing to play): not an error.
        let _ = self.0.pcm.drain();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_say_retry_recover_or_lost() {
        let e = |n| alsa::Error::new("snd_pcm_readi", n);
        assert!(is_retry(&e(libc::EAGAIN)) && is_retry(&e(libc::EINTR)));
        let mut pending = None;
        assert!(matches!(
            classify(e(libc::EPIPE), &mut pending, "mic"),
            DeviceError::Xrun
        ));
        assert_eq!(pending.map(|p| p.errno()), Some(libc::EPIPE));
        assert!(matches!(
            classify(e(libc::ESTRPIPE), &mut None, "mic"),
            DeviceError::Xrun
        ));
        for lost in [libc::ENODEV, libc::EBADFD, libc::EIO] {
            assert!(!is_retry(&e(lost)));
            assert!(matches!(
                classify(e(lost), &mut None, "mic"),
                DeviceError::Lost(_)
            ));
        }
    }
}
