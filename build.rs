//! Records build facts for `/api/v1/status/buildinfo` and `m3query_build_info`.
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    // A build without .git (a container build context) may pass them in the environment.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let revision = env("M3QUERY_GIT_REVISION")
        .or_else(|| run("git", &["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let branch = env("M3QUERY_GIT_BRANCH")
        .or_else(|| run("git", &["rev-parse", "--abbrev-ref", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rust_version = run(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(|s| format!("rustc{s}")))
        .unwrap_or_else(|| "unknown".into());
    // Reproducible builds set SOURCE_DATE_EPOCH; otherwise the commit date.
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| run("git", &["log", "-1", "--format=%ct"]))
        .unwrap_or_else(|| "0".into());
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=M3QUERY_REVISION={revision}");
    println!("cargo:rustc-env=M3QUERY_BRANCH={branch}");
    println!("cargo:rustc-env=M3QUERY_RUST_VERSION={rust_version}");
    println!("cargo:rustc-env=M3QUERY_BUILD_EPOCH={date}");
    println!("cargo:rustc-env=M3QUERY_BUILD_USER={user}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=M3QUERY_GIT_REVISION");
    println!("cargo:rerun-if-env-changed=M3QUERY_GIT_BRANCH");
}
