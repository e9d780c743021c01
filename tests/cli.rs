//! The binary's offline commands: `demo`, `check-config`, `fetch` from a pre-populated
//! cache without network.

mod support;

use std::path::{Path, PathBuf};
use support::*;

/// Asserts `o` succeeded (both outputs in the message) and returns its stdout.
fn stdout_of_success(o: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// `moshid demo --fast ARGS` on `seconds` of voice written in `dir`, into `dir/out.wav` and
/// `dir/t.jsonl`; asserts success and returns the stdout and those two paths.
fn demo_files(dir: &Path, seconds: f32, args: &[&str]) -> (String, PathBuf, PathBuf) {
    let input = dir.join("in.wav");
    write_voice_wav(&input, seconds);
    let out = dir.join("out.wav");
    let transcript = dir.join("t.jsonl");
    let o = moshid_cmd()
        .args(["demo", "--fast"])
        .args(args)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--transcript")
        .arg(&transcript)
        .output()
        .unwrap();
    (stdout_of_success(&o), out, transcript)
}

#[test]
fn demo_turns_a_wav_into_a_wav_and_a_transcript() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let cache = model_cache();
    let (stdout, out, transcript) =
        demo_files(dir.path(), 3.0, &["--cache-dir", cache.to_str().unwrap()]);
    assert!(stdout.contains("WEIGHTS ARE RANDOM"), "{stdout}");
    assert!(stdout.contains("RTF"), "{stdout}");
    let (n, peak) = wav_peak(&out);
    // 3 s in -> 3 s out (rounded up to whole 80 ms frames), with a non-silent voice.
    assert_eq!(n, (3 * 24_000usize).div_ceil(1920) * 1920);
    assert!(peak > 0.01, "silent output");
    let lines = std::fs::read_to_string(&transcript).unwrap();
    let pieces: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!pieces.is_empty(), "empty transcript");
    assert!(pieces
        .iter()
        .all(|p| p["text"].is_string() && p["time"].is_number()));
}

#[test]
fn check_config_accepts_the_example_and_names_bad_fields() {
    let example = repo_file("systemd/moshid.toml.example");
    let example = example.to_str().unwrap();
    let o = moshid(&["check-config", example]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("OK"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[mqtt]\nport = 0\nenabled = true\n[sampling]\ntemp_text = -1\n",
    )
    .unwrap();
    let o = moshid(&["check-config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`mqtt.port`") && err.contains("`sampling.temp_text`"),
        "{err}"
    );

    std::fs::write(&bad, "[audio]\ncaptur = \"default\"\n").unwrap();
    let o = moshid(&["check-config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("captur"));
}

#[test]
fn fetch_uses_a_prepopulated_cache_offline() {
    // A cache laid out like Python's huggingface_hub: refs/main, snapshots/<rev>/file ->
    // ../../blobs/<sha256>. With offline = true nothing may touch the network.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir
        .path()
        .join("cache/hub/models--kyutai--moshiko-candle-q8");
    let rev = "7f0f9d9e0c6d1c3b2a19e8f7a6b5c4d3e2f1a0b9";
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(rev)).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    for (name, content) in [
        ("model.q8.gguf", "lm weights"),
        (
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            "mimi weights",
        ),
        ("tokenizer_spm_32k_3.model", "spm"),
    ] {
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(content.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(repo.join("blobs").join(&hash), content).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{hash}"),
            repo.join("snapshots").join(rev).join(name),
        )
        .unwrap();
    }
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "cache_dir = \"{}\"\n[model]\noffline = true\n",
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let o = moshid_cmd()
        .args(["fetch", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = stdout_of_success(&o);
    assert!(stdout.contains("voice moshiko: verified"), "{stdout}");

    // Corrupt one blob: fetch refuses it (and says to re-download) instead of using it.
    let gguf =
        std::fs::canonicalize(repo.join("snapshots").join(rev).join("model.q8.gguf")).unwrap();
    std::fs::write(&gguf, "lm weightz").unwrap();
    std::fs::remove_dir_all(dir.path().join("cache/hub/.moshid-verified")).unwrap();
    let o = moshid_cmd()
        .args(["fetch", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not match its hash"), "{err}");
    assert!(!gguf.exists(), "the corrupt blob must be deleted");
}

const REPO_FILES: [&str; 3] = [
    "model.q8.gguf",
    "tokenizer-e351c8d8-checkpoint125.safetensors",
    "tokenizer_spm_32k_3.model",
];

fn hub_files() -> Vec<(String, Vec<u8>)> {
    REPO_FILES
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), bytes(200_000 + i * 1000, i as u64 + 7)))
        .collect()
}

fn fetch(cache: &Path, hub: &FakeHub, offline: bool) -> std::process::Output {
    let cfg = cache.with_extension("toml");
    std::fs::write(
        &cfg,
        format!(
            "cache_dir = \"{}\"\n[model]\noffline = {offline}\n",
            cache.display()
        ),
    )
    .unwrap();
    moshid_cmd()
        .args(["fetch", "--config"])
        .arg(&cfg)
        .env("HF_ENDPOINT", &hub.url)
        // Short waits: a broken hub fails in about a second, not after 5 attempts.
        .env("MOSHID_DOWNLOAD_TIMEOUT_S", "0.5")
        .env("MOSHID_DOWNLOAD_ATTEMPTS", "2")
        .output()
        .unwrap()
}

#[test]
fn fetch_from_a_stalling_hub_is_one_error_naming_file_and_server() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let hub = FakeHub::serve(hub_files(), vec![Body::StallAfter(30_000)], 206, usize::MAX);
    let t = std::time::Instant::now();
    let o = fetch(&cache, &hub, false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "no hang");
    let want = format!(
        "moshid: error: cannot download model.q8.gguf from {}: the server stalled: nothing received for 500ms at 0.06 MB of 0.20 MB; gave up after 2 attempts (run again to resume)\n",
        hub.host()
    );
    assert!(err.contains(&want), "{err}");
    assert!(
        err.contains("retrying model.q8.gguf: the server stalled"),
        "{err}"
    );
    assert!(!err.contains("HF_TOKEN"), "{err}");
    // The healthy hub later: the .part (60 kB from two attempts) is resumed, not restarted.
    hub.replan(vec![Body::Full]);
    let o = fetch(&cache, &hub, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(snapshot(&cache, REPO_FILES[0])).unwrap(),
        hub.files[0].1
    );
    assert!(
        hub.ranges().contains(&"bytes=60000-".to_string()),
        "{:?}",
        hub.ranges()
    );
}

fn snapshot(cache: &Path, file: &str) -> PathBuf {
    cache
        .join("hub/models--kyutai--moshiko-candle-q8/snapshots/0123456789abcdef0123456789abcdef01234567")
        .join(file)
}

#[test]
fn fetch_downloads_verifies_and_then_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let hub = FakeHub::start(hub_files(), HubMode::Good, usize::MAX);
    let o = fetch(&cache, &hub, false);
    let stdout = stdout_of_success(&o);
    assert!(stdout.contains("voice moshiko: verified"), "{stdout}");
    for (name, data) in &hub.files {
        assert_eq!(
            &std::fs::read(snapshot(&cache, name)).unwrap(),
            data,
            "{name}"
        );
    }
    // Offline now, with the hub gone quiet: the cache alone must do.
    let gone = FakeHub::gone();
    let o = fetch(&cache, &gone, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn fetch_never_keeps_a_corrupt_or_partial_file() {
    for mode in [HubMode::Corrupt, HubMode::Truncate] {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let hub = FakeHub::start(hub_files(), mode, usize::MAX);
        let o = fetch(&cache, &hub, false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{mode:?} was accepted");
        if mode == HubMode::Corrupt {
            assert!(err.contains("does not match its hash"), "{err}");
        }
        // Nothing usable was left under the final name.
        assert!(!snapshot(&cache, REPO_FILES[0]).exists(), "{mode:?}: {err}");
        let blobs = cache.join("hub/models--kyutai--moshiko-candle-q8/blobs");
        for e in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".part") || name.ends_with(".lock"),
                "{mode:?}: complete-looking blob {name} left behind"
            );
        }
    }
}

#[test]
fn demo_with_a_local_model_from_the_config() {
    // `source = "local"`: the LM fixture (a small Moshi in the candle layout, its
    // lm_kwargs JSON and a real SentencePiece model) and a random Mimi sized to match.
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures("lm");
    let lm_cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("config.json")).unwrap()).unwrap();
    let mut mimi = moshid_models::mimi::MimiConfig::v0_1();
    mimi.seanet.n_filters = 8;
    mimi.seanet.dimension = 64;
    mimi.transformer.d_model = 64;
    mimi.transformer.num_heads = 4;
    mimi.transformer.num_layers = 1;
    mimi.transformer.dim_feedforward = 128;
    mimi.quantizer.dimension = 32;
    mimi.quantizer.n_q = 8;
    mimi.quantizer.bins = lm_cfg["card"].as_u64().unwrap() as usize;
    let mimi_path = dir.path().join("mimi.safetensors");
    moshid_models::mimi::write_random_checkpoint(&mimi, 5, &mimi_path).unwrap();
    std::fs::write(
        dir.path().join("mimi.json"),
        serde_json::to_string(&mimi).unwrap(),
    )
    .unwrap();
    let cfg = dir.path().join("local.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nsource = \"local\"\n[model.local]\nlm = \"{fx}/model_candle.safetensors\"\n\
             lm_config = \"{fx}/config.json\"\ntokenizer = \"{fx}/spm.model\"\nmimi = \"{m}\"\n\
             mimi_config = \"{d}/mimi.json\"\n[sampling]\ntemp_text = 5.0\n",
            fx = fx.display(),
            m = mimi_path.display(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let (stdout, out, transcript) =
        demo_files(dir.path(), 4.0, &["--config", cfg.to_str().unwrap()]);
    assert!(!stdout.contains("RANDOM"), "{stdout}");
    assert!(stdout.contains("Local"), "{stdout}");
    let (n, peak) = wav_peak(&out);
    assert_eq!(n, (4 * 24_000usize).div_ceil(1920) * 1920);
    assert!(peak > 0.0, "silent output");
    // Text pieces come from the SentencePiece model: all its pieces are short and
    // never contain the `▁` marker (turned into spaces).
    let text: String = std::fs::read_to_string(&transcript)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!text.is_empty(), "no text from a hot text temperature");
    assert!(!text.contains('\u{2581}'), "{text}");
}

#[test]
fn demo_attaches_to_a_broker() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let obs = Observer::connect(broker.port, "obs", &["moshid/demo/#"]);
    let input = dir.path().join("in.wav");
    write_voice_wav(&input, 3.0);
    let o = moshid_cmd()
        .args(["demo", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.wav"))
        .arg("--transcript")
        .arg(dir.path().join("t.jsonl"))
        .arg("--cache-dir")
        .arg(model_cache())
        .arg("--mqtt")
        .arg(format!("127.0.0.1:{}", broker.port))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let msgs = obs.all();
    let on = |t: &str| msgs.iter().filter(|m| m.topic == t).count();
    assert!(on("moshid/demo/transcript") > 5, "{msgs:?}");
    assert!(msgs
        .iter()
        .any(|m| m.topic == "moshid/demo/state" && m.payload.contains("\"conversation\"")));
    assert!(msgs
        .iter()
        .any(|m| m.topic == "moshid/demo/availability" && m.payload == "offline"));
}

/// `moshid demo` in `dir` with `args`; returns (success, stdout + stderr).
fn demo_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let input = dir.join("in.wav");
    write_voice_wav(&input, 1.0);
    let o = moshid_cmd()
        .current_dir(dir)
        .args(["demo", "--fast", "--input"])
        .arg(&input)
        .arg("--cache-dir")
        .arg(model_cache())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn demo_output_that_cannot_be_written_is_an_error() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = demo_in(dir.path(), &["--output", "/nonexistent/out.wav"]);
    assert!(
        !ok && text.contains("/nonexistent/out.wav") && !text.contains("wrote"),
        "{text}"
    );
    // A full disk: every write fails with ENOSPC, reported by the speaker's stream itself.
    let (ok, text) = demo_in(dir.path(), &["--output", "/dev/full"]);
    assert!(
        !ok && text.contains("/dev/full") && text.contains("No space left"),
        "{text}"
    );
    assert!(!text.contains("wrote /dev/full"), "{text}");
}

#[test]
fn demo_streams_into_a_null_device() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // It cannot be read back: success is every write accepted, not a re-read WAV.
    let (ok, text) = demo_in(dir.path(), &["--output", "/dev/null"]);
    assert!(ok && text.contains("wrote /dev/null"), "{text}");
}

#[test]
fn passthrough_into_a_full_device_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    write_voice_wav(&input, 2.0);
    let o = moshid(&[
        "audio",
        "passthrough",
        "--capture",
        &format!("wav:{}", input.display()),
        "--playback",
        "wav:/dev/full",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("/dev/full") && err.contains("No space left"),
        "{err}"
    );
    assert!(!out.contains("done"), "{out}");
}

#[test]
fn cli_numbers_get_the_same_range_checks_as_the_config() {
    let lm = fixtures("lm/model_candle.safetensors");
    let cfg = fixtures("lm/config.json");
    let (lm, cfg) = (lm.to_str().unwrap(), cfg.to_str().unwrap());
    let codes = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        codes.path(),
        r#"{"num_codebooks":8,"codes":[[1,2,3,4,5,6,7,8]]}"#,
    )
    .unwrap();
    let codes = codes.path().to_str().unwrap();
    let infer = |extra: &[&str]| moshid(&infer_args(lm, cfg, codes, extra));
    for (extra, want) in [
        (&["--temp", "NaN"][..], "temperature NaN"),
        (&["--temp-text=-1"][..], "temperature -1"),
        (&["--top-k", "0"][..], "top-k 0"),
        (
            &["--context", "18446744073709551615"][..],
            "context 18446744073709551615",
        ),
    ] {
        let o = infer(extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "{extra:?}: {err}"
        );
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "one error line: {err}");
        assert!(errors[0].contains(want), "{err}");
    }
    for args in [
        &["demo", "--seconds", "NaN"][..],
        &["demo", "--seconds=-3"][..],
        &["demo", "--seconds", "1e12"][..],
        &["bench", "mimi", "--frames", "1000000000000"][..],
        &["audio", "aec", "--skip-seconds=-1"][..],
        &["bench", "mimi", "--warmup", "10000000"][..],
        &["bench", "mimi", "--num-codebooks", "100000"][..],
    ] {
        let o = moshid(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("invalid value"),
            "{args:?}: {err}"
        );
    }
    // Numbers that once reached an allocation (exit 134): the config's ranges.
    for (flag, v) in [
        ("--playback-rate", "4294967295"),
        ("--capture-rate", "0"),
        ("--capture-channels", "100000000"),
        ("--playback-channels", "0"),
        ("--gain", "NaN"),
        ("--mic-channels", "99"),
    ] {
        let o = moshid(&[
            "audio",
            "passthrough",
            "--capture",
            "a",
            "--playback",
            "b",
            flag,
            v,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.code() == Some(2) && err.contains("invalid value") && err.contains(flag),
            "{flag} {v}: {err}"
        );
    }
}

#[test]
fn infer_trace_into_a_full_device_names_it() {
    let lm = fixtures("lm/model_candle.safetensors");
    let cfg = fixtures("lm/config.json");
    let codes = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        codes.path(),
        r#"{"num_codebooks":8,"codes":[[1,2,3,4,5,6,7,8]]}"#,
    )
    .unwrap();
    let (lm, cfg, codes) = (
        lm.to_str().unwrap(),
        cfg.to_str().unwrap(),
        codes.path().to_str().unwrap(),
    );
    let o = moshid(&infer_args(lm, cfg, codes, &["--trace", "/dev/full"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--trace") && err.contains("/dev/full"),
        "{err}"
    );
}

#[test]
fn check_config_catches_what_run_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("not-pem.pem"), "hello\n").unwrap();
    std::fs::write(d.join("a-file"), "").unwrap();
    let cases = [
        (
            "[mqtt]\nenabled = true\n[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"\n".to_string(),
            "/nonexistent/ca.pem",
        ),
        (
            format!("[mqtt]\nenabled = true\n[mqtt.tls]\nca_file = \"{}/not-pem.pem\"\n", d.display()),
            "no PEM certificate",
        ),
        (
            "[mqtt]\nenabled = true\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n".into(),
            "/nonexistent/pw",
        ),
        (
            "[model]\nsource = \"local\"\n[model.local]\nlm = \"/nonexistent/lm.gguf\"\nmimi = \"/nonexistent/m\"\ntokenizer = \"/nonexistent/t\"\n".into(),
            "/nonexistent/lm.gguf",
        ),
        (format!("cache_dir = \"{}/a-file\"\n", d.display()), "is not a folder"),
        ("[model]\ndevice = \"cuda:99\"\n".into(), "cuda:99"),
        (
            format!("[web]\nstate_dir = \"{}/a-file\"\n", d.display()),
            "`web.state_dir`",
        ),
        (
            format!("[web]\ntoken_file = \"{}\"\n", d.display()),
            "`web.token_file`",
        ),
    ];
    for (toml, want) in cases {
        let p = d.join("c.toml");
        std::fs::write(&p, &toml).unwrap();
        let o = moshid_cmd().arg("check-config").arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{toml}\n{err}");
        assert!(!String::from_utf8_lossy(&o.stdout).contains("OK"), "{toml}");
        // Each cause printed once.
        assert!(
            !err.contains("(os error 2): No such file"),
            "repeated cause: {err}"
        );
    }
}
