//! `scripts/gpu-check.sh`: the JSON its device mode writes, run on the CPU with this build's
//! binary and the fixture-sized models, and its CUDA library lookup against a fake
//! site-packages tree (the GPU machine's layout).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moshid-gpu-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn cpu_mode_writes_every_part_as_json() {
    let out = tmp("out");
    let st = Command::new("bash")
        .arg(repo().join("scripts/gpu-check.sh"))
        .args(["--device", "cpu", "--quick", "--budget", "300", "--bin"])
        .arg(env!("CARGO_BIN_EXE_moshid"))
        .arg("--out")
        .arg(&out)
        .current_dir(repo())
        .status()
        .expect("bash runs");
    assert!(st.success(), "gpu-check.sh --device cpu failed: {st}");
    let text = std::fs::read_to_string(out.join("gpu-check.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let mut parts: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for l in &lines {
        assert!(l.get("rc").is_none(), "a part failed: {l}");
        assert!(l.get("skipped").is_none(), "a part was skipped: {l}");
        parts
            .entry(l["part"].as_str().unwrap().to_string())
            .or_default()
            .push(l);
    }
    let n = |p: &str| parts.get(p).map_or(0, Vec::len);
    // Mimi and the LM in three dtypes, each with its agreement figures.
    assert_eq!(n("parity"), 6, "{text}");
    for p in &parts["parity"] {
        let model = p["model"].as_str().unwrap();
        let key = if model == "mimi" {
            "decode_snr_db_8"
        } else {
            "max_text_logit_err"
        };
        assert!(p[key].is_number(), "{p}");
    }
    assert_eq!(n("lm-write"), 3, "{text}");
    assert_eq!(n("bench-lm"), 6, "{text}");
    assert_eq!(n("lm-rate"), 6, "{text}");
    for r in &parts["lm-rate"] {
        assert!(r["achieved_gbps"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(n("bench-mimi") >= 1, "{text}");
    let demo = parts["demo-figures"][0];
    assert!(demo["step_mean_ms"].as_f64().unwrap() > 0.0, "{demo}");
    assert!(demo["latency_mean_ms"].as_f64().unwrap() > 0.0, "{demo}");
    assert_eq!(n("host"), 1);
    assert_eq!(n("done"), 1);
    let _ = std::fs::remove_dir_all(&out);
}

fn touch(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for n in names {
        std::fs::write(dir.join(n), b"").unwrap();
    }
}

fn find_libs(site: &Path, driver: &Path) -> (bool, String, String) {
    let o = Command::new("bash")
        .arg(repo().join("scripts/gpu-check.sh"))
        .arg("--find-libs")
        .arg(site)
        .env("GPU_CHECK_DRIVER_DIRS", driver)
        .output()
        .expect("bash runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn finds_cuda_libraries_in_site_packages() {
    let t = tmp("libs");
    let site = t.join("lib/python3.12/site-packages");
    let driver = t.join("usr/local/nvidia/lib64");
    // cuda-toolkit's layout (nvidia/cu13/lib) for cudart and cuBLAS, a per-component wheel
    // (nvidia/curand/lib) for cuRAND, the driver elsewhere.
    let cu13 = site.join("nvidia/cu13/lib");
    touch(
        &cu13,
        &["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"],
    );
    let curand = site.join("nvidia/curand/lib");
    touch(&curand, &["libcurand.so.10"]);
    touch(&driver, &["libcuda.so.1"]);
    let (ok, out, err) = find_libs(&site, &driver);
    assert!(ok, "{out}{err}");
    let path = out.trim().strip_prefix("LD_LIBRARY_PATH=").expect(&out);
    let dirs: Vec<&str> = path.split(':').collect();
    for d in [&cu13, &curand, &driver] {
        assert!(dirs.contains(&d.to_str().unwrap()), "{d:?} not in {path}");
    }

    // A missing library is named, with a failing status.
    std::fs::remove_file(curand.join("libcurand.so.10")).unwrap();
    let (ok, _, err) = find_libs(&site, &driver);
    assert!(!ok);
    assert!(err.contains("libcurand.so.10"), "{err}");
    std::fs::remove_file(driver.join("libcuda.so.1")).unwrap();
    let (_, _, err) = find_libs(&site, &driver);
    assert!(err.contains("libcuda.so.1"), "{err}");
    let _ = std::fs::remove_dir_all(&t);
}
