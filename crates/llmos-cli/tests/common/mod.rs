//! Helpers shared by the CLI integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn llmos() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmos"));
    c.env("LLMOS_NO_PROGRESS", "1");
    c
}

pub fn run(args: &[&str]) -> Output {
    llmos().args(args).output().expect("llmos runs")
}

/// The repo's committed fixtures.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn fixture_json(name: &str) -> serde_json::Value {
    let p = fixture(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// A model that scripts/fetch-test-assets pulled into the cache.
pub fn model(alias: &str) -> PathBuf {
    let home = std::env::var_os("LLMOS_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/llmos"));
    let p = home.join("models").join(format!("{alias}.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-assets first",
        p.display()
    );
    p
}

pub fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// stdout of a run that must succeed (its stderr in the failure message).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of a failed run: must be exactly one line starting with "error: ".
pub fn one_line_error(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {e:?}");
    assert!(lines[0].starts_with("error: "), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    lines[0].to_string()
}

/// A scratch directory per test, removed when the test ends (pass or fail).
pub struct TempDir(pub PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh scratch directory named after the test binary's process and `name`.
pub fn scratch(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("llmos-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}
