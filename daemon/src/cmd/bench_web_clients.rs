//! `moshid bench web --clients N`: N concurrent `moshid client` sessions against a
//! `moshid demo --web` this command starts on loopback (plain WebSocket, the demo model,
//! `--max-conversations N`): each client's reply latency p50/p95 as it measures it, the
//! frames the server dropped, and the server's CPU time per 80 ms frame served. One JSON
//! line.

use serde::Serialize;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One client's figures (from its own JSON line).
#[derive(Serialize)]
struct ClientFigures {
    /// Reply latency per frame, median, ms.
    p50_ms: Option<f64>,
    /// 95th percentile, ms.
    p95_ms: Option<f64>,
    /// Seconds of audio heard.
    audio_s: f64,
    /// Handshake after connect, ms.
    handshake_ms: Option<f64>,
}

/// The line printed.
#[derive(Serialize)]
struct Report {
    bench: &'static str,
    clients: usize,
    seconds: f64,
    per_client: Vec<ClientFigures>,
    /// Worst client's p95, ms.
    worst_p95_ms: Option<f64>,
    /// Input frames the server dropped (the model behind) and output frames a client could
    /// not take, all sessions.
    web_dropped_input: u64,
    web_dropped_output: u64,
    /// Server CPU (all threads) over the run, per 80 ms frame served (all sessions).
    server_cpu_ms_per_frame: Option<f64>,
    /// Batched steps and frames the server ran: frames / steps is the mean batch.
    server_steps: u64,
    /// The 1-minute load average at the end (other work skews the figures).
    load_average: Option<f64>,
}

/// Starts the server, runs the clients, prints the line.
pub fn run(clients: usize, seconds: f64) -> anyhow::Result<()> {
    let clients = clients.max(1);
    let dir = std::env::temp_dir().join(format!("moshid-bench-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let wav = dir.join("voice.wav");
    write_wav(&wav, seconds + 1.0)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe()?;
    let mut server = Command::new(&exe)
        .args(["demo", "--web", "--no-tls", "--listen", &listen])
        .args(["--max-conversations", &clients.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = measure(&exe, &mut server, port, &wav, clients, seconds);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let line = result?;
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

fn measure(
    exe: &std::path::Path,
    server: &mut Child,
    port: u16,
    wav: &std::path::Path,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Report> {
    wait_for_state(port, Duration::from_secs(60))?;
    let cpu0 = process_cpu_ms(server.id());
    let url = format!("ws://127.0.0.1:{port}/api/chat");
    let kids: Vec<Child> = (0..clients)
        .map(|_| {
            Command::new(exe)
                .args(["client", "--url", &url, "--seconds", &seconds.to_string()])
                .arg("--input")
                .arg(wav)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut per_client = Vec::new();
    for k in kids {
        let out = k.wait_with_output()?;
        let line = String::from_utf8_lossy(&out.stdout);
        let j: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        per_client.push(ClientFigures {
            p50_ms: j["latency_ms"]["p50"].as_f64(),
            p95_ms: j["latency_ms"]["p95"].as_f64(),
            audio_s: j["audio_s"].as_f64().unwrap_or(0.0),
            handshake_ms: j["handshake_ms"].as_f64(),
        });
    }
    let cpu1 = process_cpu_ms(server.id());
    let st = get_state(port)?;
    let frames = st["frames"].as_u64().unwrap_or(0);
    Ok(Report {
        bench: "web-clients",
        clients,
        seconds,
        worst_p95_ms: per_client.iter().filter_map(|c| c.p95_ms).reduce(f64::max),
        per_client,
        web_dropped_input: st["web_dropped_input"].as_u64().unwrap_or(0),
        web_dropped_output: st["web_dropped_output"].as_u64().unwrap_or(0),
        server_cpu_ms_per_frame: match (cpu0, cpu1) {
            (Some(a), Some(b)) if frames > 0 => {
                Some(((b - a) / frames as f64 * 100.0).round() / 100.0)
            }
            _ => None,
        },
        server_steps: st["steps"].as_u64().unwrap_or(0),
        load_average: super::procstat::load_average(),
    })
}

/// User + system CPU time of process `pid`, ms (Linux /proc).
fn process_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks * 1000.0 / hz)
}

/// `/api/state` of the demo server.
fn get_state(port: u16) -> anyhow::Result<serde_json::Value> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(serde_json::from_str(json)?)
}

fn wait_for_state(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if get_state(port).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("moshid demo --web did not answer on 127.0.0.1:{port} within {timeout:?}")
}

/// A voice-like WAV the clients send.
fn write_wav(path: &std::path::Path, seconds: f64) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 24_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for s in super::bench_web::signal((seconds * 24_000.0) as usize) {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    w.finalize()?;
    Ok(())
}
