//! Build facts for `/api/chat`'s metadata (`build_info`, the keys of Kyutai's server). Git
//! facts are "unknown" outside a checkout; nothing here fails the build.

use std::process::Command;

fn out(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let set = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            println!("cargo:rustc-env={k}={v}");
        }
    };
    set(
        "MOSHID_BUILD_TIMESTAMP",
        out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    );
    set("MOSHID_GIT_HASH", out("git", &["rev-parse", "HEAD"]));
    set(
        "MOSHID_GIT_BRANCH",
        out("git", &["rev-parse", "--abbrev-ref", "HEAD"]),
    );
    set(
        "MOSHID_GIT_DESCRIBE",
        out("git", &["describe", "--always", "--dirty"]),
    );
    set(
        "MOSHID_GIT_TIMESTAMP",
        out("git", &["log", "-1", "--format=%cI"]),
    );
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    set("MOSHID_RUSTC_VERSION", out(&rustc, &["--version"]));
    set(
        "MOSHID_RUSTC_HOST",
        out(&rustc, &["-vV"]).and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        }),
    );
    set("MOSHID_TARGET", std::env::var("TARGET").ok());
    // Re-run when the commit changes, not on every build.
    if let Some(head) = out("git", &["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(r) = out("git", &["rev-parse", "--symbolic-full-name", "HEAD"]) {
        if let Some(p) = out("git", &["rev-parse", "--git-path", &r]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
