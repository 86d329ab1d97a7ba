//! `cargo xtask package`: the Debian package, assembled by hand and built with `dpkg-deb`
//! from the files in `packaging/` (control, conffiles, maintainer scripts, unit) and what
//! the release `xlb` generates from its own CLI definition (man pages, completions).
//! dpkg-deb is part of dpkg, so packaging needs nothing installed beyond binutils.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{output, run, target_dir, workspace};

/// Where a file of the package comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A file of the repository.
    Repo(&'a str),
    /// The standard output of the staged `xlb` with these arguments.
    Xlb(&'a [&'a str]),
}

/// Files of the package besides the binary, the docs, the man pages and DEBIAN/.
const FILES: [(&str, Source<'_>); 5] = [
    ("etc/xlb/xlb.toml", Source::Repo("examples/xlb.toml")),
    (
        "lib/systemd/system/xlb.service",
        Source::Repo("packaging/systemd/xlb.service"),
    ),
    (
        "usr/share/bash-completion/completions/xlb",
        Source::Xlb(&["completions", "bash"]),
    ),
    (
        "usr/share/zsh/vendor-completions/_xlb",
        Source::Xlb(&["completions", "zsh"]),
    ),
    (
        "usr/share/fish/vendor_completions.d/xlb.fish",
        Source::Xlb(&["completions", "fish"]),
    ),
];

/// Files of the repository under /usr/share/doc/xlb/: `docs/` flattened, `examples/` kept.
const DOCS: [&str; 16] = [
    "packaging/debian/copyright",
    "README.md",
    "docs/install.md",
    "docs/control-plane.md",
    "docs/datapath.md",
    "docs/lab.md",
    "docs/fleet.md",
    "examples/xlb.toml",
    "examples/bird/bird.conf",
    "examples/bird/router.conf",
    "examples/bird/xlb-announce.conf",
    "examples/prometheus/xlb-alerts.yml",
    "examples/prometheus/prometheus.yml",
    "examples/grafana/xlb.json",
    "examples/ci/validate.yml",
    "examples/ci/check-config.sh",
];

/// Where repository file `from` goes under /usr/share/doc/xlb/.
fn doc_path(from: &str) -> &str {
    if from.starts_with("examples/") {
        return from;
    }
    from.rsplit('/').next().unwrap_or(from)
}

/// Maintainer scripts (mode 0755) and metadata (0644) from packaging/debian/.
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

/// Builds the release `xlb` and the package; returns the .deb's path (in `out`, default
/// target/debian/).
pub(crate) fn package(out: Option<PathBuf>, revision: u32) -> Result<PathBuf> {
    run(Command::new("cargo").args(["build", "--locked", "--release", "--bins"]))?;
    let ws = workspace();
    let target = target_dir();
    let stage = target.join("package/xlb");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let xlb = stage.join("usr/bin/xlb");
    mkdir(xlb.parent().context("usr/bin")?)?;
    run(Command::new("strip")
        .args(["--strip-unneeded", "-o"])
        .arg(&xlb)
        .arg(target.join("release/xlb")))?;
    chmod(&xlb, 0o755)?;

    let docs = DOCS.iter().map(|from| {
        (
            format!("usr/share/doc/xlb/{}", doc_path(from)),
            Source::Repo(from),
        )
    });
    let files = FILES
        .iter()
        .map(|(dest, source)| ((*dest).to_string(), *source));
    for (dest, source) in files.chain(docs) {
        let path = stage.join(dest);
        mkdir(path.parent().context("parent")?)?;
        match source {
            Source::Repo(from) => {
                fs::copy(ws.join(from), &path).with_context(|| format!("copying {from}"))?;
            }
            Source::Xlb(args) => {
                let text = output(Command::new(&xlb).args(args))
                    .with_context(|| format!("xlb {args:?} failed"))?;
                fs::write(&path, text)?;
            }
        }
        chmod(&path, 0o644)?;
    }
    // The conffile must be an example that validates: the first thing an operator runs.
    run(Command::new(&xlb)
        .arg("validate")
        .arg(stage.join("etc/xlb/xlb.toml")))?;
    man_pages(&xlb, &stage.join("usr/share/man/man1"))?;
    // Directories as create_dir_all left them would follow the umask: 0755 each, except
    // the state dir, which holds the history and is root's alone.
    let mut dirs = Vec::new();
    walk_dirs(&stage, &mut dirs)?;
    for d in &dirs {
        chmod(d, 0o755)?;
    }
    let state = stage.join("var/lib/xlb");
    mkdir(&state)?;
    chmod(&state, 0o700)?;

    let debian = stage.join("DEBIAN");
    mkdir(&debian)?;
    for script in SCRIPTS {
        let path = debian.join(script);
        fs::copy(ws.join("packaging/debian").join(script), &path)?;
        chmod(&path, 0o755)?;
    }
    fs::copy(
        ws.join("packaging/debian/conffiles"),
        debian.join("conffiles"),
    )?;
    md5sums(&stage)?;
    let version = format!("{}-{revision}", env!("CARGO_PKG_VERSION"));
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture")?
        .trim()
        .to_string();
    let mut control = fs::read_to_string(ws.join("packaging/debian/control"))?;
    for (placeholder, value) in [
        ("@VERSION@", version.clone()),
        ("@ARCH@", arch.clone()),
        ("@SIZE@", installed_kib(&stage)?.to_string()),
        ("@DEPENDS@", format!("libc6 (>= {})", glibc_needed(&xlb)?)),
    ] {
        ensure!(
            control.contains(placeholder),
            "packaging/debian/control has no {placeholder}"
        );
        control = control.replace(placeholder, &value);
    }
    fs::write(debian.join("control"), control)?;
    for f in ["control", "conffiles", "md5sums"] {
        chmod(&debian.join(f), 0o644)?;
    }

    let out = out.unwrap_or_else(|| target.join("debian"));
    mkdir(&out)?;
    let deb = out.join(format!("xlb_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// A gzipped page per verb, generated by the binary from its clap definition.
fn man_pages(xlb: &Path, dir: &Path) -> Result<()> {
    mkdir(dir)?;
    run(Command::new(xlb).arg("manpages").arg(dir))?;
    let mut pages = Vec::new();
    for entry in fs::read_dir(dir)? {
        let page = entry?.path();
        chmod(&page, 0o644)?;
        pages.push(page);
    }
    ensure!(!pages.is_empty(), "xlb manpages wrote no page");
    pages.sort();
    // -n: no name or time stamp in the header, so the same pages give the same bytes.
    run(Command::new("gzip").args(["-9", "-n"]).args(&pages))
}

/// DEBIAN/md5sums: every regular file outside DEBIAN/, relative to the root.
fn md5sums(stage: &Path) -> Result<()> {
    let mut files = Vec::new();
    walk(stage, &mut files)?;
    files.retain(|f| !f.starts_with(stage.join("DEBIAN")));
    files.sort();
    let mut cmd = Command::new("md5sum");
    cmd.current_dir(stage);
    for f in &files {
        cmd.arg(f.strip_prefix(stage)?);
    }
    let sums = output(&mut cmd).context("md5sum")?;
    fs::write(stage.join("DEBIAN/md5sums"), sums)?;
    Ok(())
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn walk_dirs(dir: &Path, dirs: &mut Vec<PathBuf>) -> Result<()> {
    dirs.push(dir.to_path_buf());
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk_dirs(&path, dirs)?;
        }
    }
    Ok(())
}

/// Installed-Size: KiB of the files, as `du` counts them.
fn installed_kib(stage: &Path) -> Result<u64> {
    let du = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(stage),
    )
    .context("du")?;
    du.split_whitespace()
        .next()
        .and_then(|k| k.parse().ok())
        .context("du printed no size")
}

/// The newest glibc symbol version the binary links against (e.g. `2.34`).
fn glibc_needed(xlb: &Path) -> Result<String> {
    let symbols = output(Command::new("objdump").arg("-T").arg(xlb)).context("objdump -T")?;
    let newest = symbols
        .split_whitespace()
        // `(GLIBC_2.34)` in objdump's version column.
        .filter_map(|w| w.trim_matches(['(', ')']).strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, v))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.to_string());
    match newest {
        Some(v) => Ok(v),
        None => bail!("{}: no GLIBC symbol versions found", xlb.display()),
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    chmod(dir, 0o755)
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
