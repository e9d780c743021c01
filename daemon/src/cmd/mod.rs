//! One module per subcommand.

pub mod audio;
pub mod bench;
pub mod bench_lm;
mod bench_mimi_batch;
pub mod bench_web;
mod bench_web_clients;
pub mod check_config;
pub mod client;
pub mod codec;
pub mod demo;
pub mod demo_web;
pub mod fetch;
pub mod infer;
pub mod parity;
pub mod persona;
pub mod procstat;
pub mod quantize;
pub mod run;
pub mod wake;

/// Longest duration a `--seconds`-like flag accepts: an hour (the demo holds its input).
pub const MAX_SECONDS: f64 = 3_600.0;

/// Parses a duration flag: a finite number of seconds in (0, an hour]. One parser for every
/// `--seconds` flag, so that `NaN`, negative or absurd values are one clear error.
pub fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v <= MAX_SECONDS) {
        return Err(format!(
            "{v} s: use a duration in (0, {MAX_SECONDS}] seconds"
        ));
    }
    Ok(v)
}

/// Parses a duration flag that may be zero: [0, an hour].
pub fn seconds_or_zero(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => seconds(s),
    }
}

/// Parses a count of frames or steps for a benchmark: 1 to a million.
pub fn count(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if !(1..=1_000_000).contains(&v) {
        return Err(format!("{v}: use 1..=1000000"));
    }
    Ok(v)
}

/// A whole number in `lo..=hi`, else a message naming the range (clap prefixes the flag).
fn whole(s: &str, lo: u64, hi: u64, unit: &str) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v}: use {lo}..={hi}{unit}"));
    }
    Ok(v)
}

/// Untimed warm-up frames: 0 to a million (each is a real encode and decode).
pub fn count_or_zero(s: &str) -> Result<usize, String> {
    whole(s, 0, 1_000_000, " frames").map(|v| v as usize)
}

/// A device's sample rate: `audio.rate`'s range, 8000 to 192000 Hz.
pub fn rate(s: &str) -> Result<u32, String> {
    whole(s, 8_000, 192_000, " Hz").map(|v| v as u32)
}

/// A device's channel count: `audio.*_channels`' range, 1 to 32.
pub fn channels(s: &str) -> Result<usize, String> {
    whole(s, 1, 32, " channels").map(|v| v as usize)
}

/// One of a device's channels (0-based), below the largest channel count.
pub fn channel(s: &str) -> Result<usize, String> {
    whole(s, 0, 31, "").map(|v| v as usize)
}

/// Codebooks per Mimi frame: 1 to 32 (the released Mimi has 32).
pub fn codebooks(s: &str) -> Result<usize, String> {
    whole(s, 1, 32, "").map(|v| v as usize)
}

/// A linear microphone gain: `audio.mic_gain`'s range, 0 to 100.
pub fn gain(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
        return Err(format!("{v}: use 0..=100"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_and_counts_are_range_checked() {
        for bad in ["NaN", "-1", "0", "inf", "1e12", "x"] {
            assert!(super::seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(super::seconds("2.5"), Ok(2.5));
        assert_eq!(super::seconds_or_zero("0"), Ok(0.0));
        assert!(super::seconds_or_zero("-0.5").is_err());
        for bad in ["0", "1000000000000", "-3", "18446744073709551616"] {
            assert!(super::count(bad).is_err(), "{bad}");
        }
        assert_eq!(super::count("50"), Ok(50));
        assert!(super::count_or_zero("10000000").is_err());
        assert_eq!(super::count_or_zero("0"), Ok(0));
        assert!(super::rate("4294967295").is_err() && super::rate("0").is_err());
        assert_eq!(super::rate("48000"), Ok(48_000));
        assert!(super::channels("0").is_err() && super::channels("33").is_err());
        assert!(super::gain("NaN").is_err() && super::gain("-1").is_err());
    }
}
