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
}

fn map_io_err(name: &str, e: alsa::Error) -> DeviceError {
    match e.errno() {
        libc_epipe if libc_epipe == EPIPE => DeviceError::Xrun,
        // Suspended (power management): prepare() brings it back like an xrun.
        e2 if e2 == ESTRPIPE => DeviceError::Xrun,
        _ => DeviceError::Lost(format!("{name}: {e}")),
    }
}

const EPIPE: i32 = 32;
const ESTRPIPE: i32 = 86;

impl Pcm {
    fn open(req: &AlsaRequest, dir: Direction) -> Result<Self, HalError> {
        let pcm = PCM::new(req.device, dir, false).map_err(|e| open_error(req.device, dir, e))?;
        let cfg_err = |what: &str, e: alsa::Error| HalError::Device {
            device: req.device.to_string(),
            reason: format!(
                "{what} not supported ({e}); try a `plughw:` or `plug` PCM, which converts"
            ),
        };
        let params = {
            let hw = HwParams::any(&pcm).map_err(|e| cfg_err("hardware parameters", e))?;
            hw.set_access(Access::RWInterleaved)
                .map_err(|e| cfg_err("interleaved access", e))?;
            let fmt = match req.format {
                SampleFormat::S16 => Format::s16(),
                SampleFormat::S32 => Format::s32(),
                SampleFormat::F32 => Format::float(),
            };
            hw.set_format(fmt)
                .map_err(|e| cfg_err(&format!("format {:?}", req.format), e))?;
            hw.set_channels(req.channels as u32)
                .map_err(|e| cfg_err(&format!("{} channels", req.channels), e))?;
            hw.set_rate(req.rate, ValueOr::Nearest)
                .map_err(|e| cfg_err(&format!("rate {} Hz", req.rate), e))?;
            hw.set_period_size_near(req.period_frames as alsa::pcm::Frames, ValueOr::Nearest)
                .map_err(|e| cfg_err(&format!("period of {} frames", req.period_frames), e))?;
            hw.set_buffer_size_near(req.buffer_frames as alsa::pcm::Frames)
                .map_err(|e| cfg_err(&format!("buffer of {} frames", req.buffer_frames), e))?;
            pcm.hw_params(&hw)
                .map_err(|e| cfg_err("these parameters together", e))?;
            let cur = pcm
                .hw_params_current()
                .map_err(|e| cfg_err("reading parameters", e))?;
            DeviceParams {
                rate: cur.get_rate().map_err(|e| cfg_err("rate", e))?,
                channels: cur.get_channels().map_err(|e| cfg_err("channels", e))? as usize,
                format: req.format,
                period_frames: cur.get_period_size().map_err(|e| cfg_err("period", e))? as usize,
                buffer_frames: cur.get_buffer_size().map_err(|e| cfg_err("buffer", e))? as usize,
            }
        };
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
        })
    }

    fn read(&mut self, buf: &mut [f32]) -> Result<usize, DeviceError> {
        let ch = self.params.channels;
        let frames = (buf.len() / ch).min(self.params.period_frames);
        let n = frames * ch;
        let name = &self.name;
        let got = match &mut self.scratch {
            Scratch::S16(s) => {
                let io = self.pcm.io_i16().map_err(|e| map_io_err(name, e))?;
                let f = io.readi(&mut s[..n]).map_err(|e| map_io_err(name, e))?;
                for (o, &v) in buf.iter_mut().zip(&s[..f * ch]) {
                    *o = v as f32 / 32768.0;
                }
                f
            }
            Scratch::S32(s) => {
                let io = self.pcm.io_i32().map_err(|e| map_io_err(name, e))?;
                let f = io.readi(&mut s[..n]).map_err(|e| map_io_err(name, e))?;
                for (o, &v) in buf.iter_mut().zip(&s[..f * ch]) {
                    *o = v as f32 / 2_147_483_648.0;
                }
                f
            }
            Scratch::F32(s) => {
                let io = self.pcm.io_f32().map_err(|e| map_io_err(name, e))?;
                let f = io.readi(&mut s[..n]).map_err(|e| map_io_err(name, e))?;
                buf[..f * ch].copy_from_slice(&s[..f * ch]);
                f
            }
        };
        Ok(got)
    }

    fn write(&mut self, buf: &[f32]) -> Result<usize, DeviceError> {
        let ch = self.params.channels;
        let frames = (buf.len() / ch).min(self.params.period_frames);
        let n = frames * ch;
        let name = &self.name;
        match &mut self.scratch {
            Scratch::S16(s) => {
                for (o, &v) in s.iter_mut().zip(&buf[..n]) {
                    *o = (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                }
                let io = self.pcm.io_i16().map_err(|e| map_io_err(name, e))?;
                io.writei(&s[..n]).map_err(|e| map_io_err(name, e))
            }
            Scratch::S32(s) => {
                for (o, &v) in s.iter_mut().zip(&buf[..n]) {
                    *o = (v as f64 * 2_147_483_648.0)
                        .round()
                        .clamp(-2_147_483_648.0, 2_147_483_647.0) as i32;
                }
                let io = self.pcm.io_i32().map_err(|e| map_io_err(name, e))?;
                io.writei(&s[..n]).map_err(|e| map_io_err(name, e))
            }
            Scratch::F32(s) => {
                s[..n].copy_from_slice(&buf[..n]);
                let io = self.pcm.io_f32().map_err(|e| map_io_err(name, e))?;
                io.writei(&s[..n]).map_err(|e| map_io_err(name, e))
            }
        }
    }

    fn recover(&mut self) -> Result<(), DeviceError> {
        self.pcm.prepare().map_err(|e| {
            DeviceError::Lost(format!("{}: cannot restart after xrun: {e}", self.name))
        })
    }
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
            .map_err(|e| DeviceError::Lost(format!("{}: cannot restart capture: {e}", self.0.name)))
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
