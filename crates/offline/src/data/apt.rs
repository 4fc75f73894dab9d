//! A private apt configuration: its own sources list, lists directory and cache under one
//! directory, so that `apt-get update` can fetch indices the system's apt is not set up for
//! (another suite, the DEP-11 icons) without editing `/etc/apt` or touching `/var/lib/apt`.
//! `scripts/install_pgvector.sh` does the same in shell.
//!
//! The mirror is the machine's own: the first `URIs:` of `/etc/apt/sources.list.d/debian.sources`
//! (deb822 sources), else the first `deb` line of `/etc/apt/sources.list`. Only apt fetches
//! anything, with the archive keyring of the `debian-archive-keyring` package.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};

pub const DEB822_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
pub const ONE_LINE_SOURCES: &str = "/etc/apt/sources.list";
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot find the machine's Debian mirror: no `URIs:` in {DEB822_SOURCES} and no `deb` line in \
         {ONE_LINE_SOURCES} (pass --mirror)"
    )]
    NoMirror,
    #[error("apt-get not found: fetching needs a Debian system (or pass --lists with files fetched elsewhere)")]
    Missing,
    #[error("cannot run apt-get: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: ExitStatus, stderr: String },
}

/// An apt configuration living in `root`: `root/sources.list`, `root/lists`, `root/archives`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateApt {
    pub root: PathBuf,
}

impl PrivateApt {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where apt writes the indices (`Dir::State::Lists`).
    pub fn lists_dir(&self) -> PathBuf {
        self.root.join("lists")
    }

    pub fn sources_list(&self) -> PathBuf {
        self.root.join("sources.list")
    }

    /// The `-o` options that point apt at this configuration and nothing of the system's.
    pub fn dir_options(&self) -> Vec<String> {
        vec![
            format!("Dir::Etc::SourceList={}", self.sources_list().display()),
            "Dir::Etc::SourceParts=/dev/null".into(),
            format!("Dir::State::Lists={}", self.lists_dir().display()),
            format!("Dir::Cache={}", self.root.display()),
        ]
    }

    /// Writes `sources` as the sources list and runs `apt-get update` with the private
    /// directories and `options` (each passed as `-o OPTION`). apt's output is kept and only
    /// shown when it fails.
    pub fn update(&self, sources: &str, options: &[String]) -> Result<(), AptError> {
        for dir in [self.lists_dir().join("partial"), self.root.join("archives").join("partial")] {
            std::fs::create_dir_all(&dir).map_err(|source| AptError::Io { path: dir.clone(), source })?;
        }
        let list = self.sources_list();
        std::fs::write(&list, sources).map_err(|source| AptError::Io { path: list.clone(), source })?;
        let mut args: Vec<String> = Vec::new();
        for o in self.dir_options().iter().chain(options) {
            args.push("-o".into());
            args.push(o.clone());
        }
        args.extend(["-q".into(), "update".into()]);
        let command = format!("apt-get {}", args.join(" "));
        tracing::info!(%command, "fetching with a private apt configuration");
        let out = Command::new("apt-get").args(&args).output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                AptError::Missing
            } else {
                AptError::Spawn(e)
            }
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stdout.lines().filter(|l| l.starts_with("Get:") || l.starts_with("Hit:")) {
            tracing::info!("apt: {line}");
        }
        // apt exits 0 after some failed downloads (`W: Failed to fetch ...`): surface them.
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            tracing::warn!("apt: {line}");
        }
        if out.status.success() {
            Ok(())
        } else {
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
            let stderr = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            Err(AptError::Failed { command, status: out.status, stderr })
        }
    }
}

/// The machine's Debian mirror (see the module documentation).
pub fn machine_mirror() -> Result<String, AptError> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    read(DEB822_SOURCES)
        .and_then(|t| mirror_from_deb822(&t))
        .or_else(|| read(ONE_LINE_SOURCES).and_then(|t| mirror_from_one_line(&t)))
        .ok_or(AptError::NoMirror)
}

/// The first URI of the first `URIs:` field of a deb822 sources file.
pub fn mirror_from_deb822(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.strip_prefix("URIs:"))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_owned)
}

/// The URI of the first `deb` line of a one-line-style sources list (options in `[...]` skipped).
pub fn mirror_from_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("deb")?.strip_prefix([' ', '\t'])?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(opts) => opts.split_once(']')?.1.trim_start(),
            None => rest,
        };
        rest.split_whitespace().next().map(str::to_owned)
    })
}

/// A one-line `deb` entry for `suite`'s `main` on `mirror`, signed by Debian's archive keyring.
pub fn deb_line(mirror: &str, suite: &str) -> String {
    format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_both_source_formats() {
        let deb822 =
            "Types: deb\n# URIs: http://commented.example/\nURIs: http://deb.debian.org/debian http://other/\n\
                      Suites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(mirror_from_deb822(deb822).as_deref(), Some("http://deb.debian.org/debian"));
        assert_eq!(mirror_from_deb822("Types: deb\n"), None);
        let one = "# deb http://commented/ x main\ndeb-src http://src/ x main\n\
                   deb [arch=amd64 signed-by=/k.gpg] http://mirror/debian bookworm main\ndeb http://second/ x main\n";
        assert_eq!(mirror_from_one_line(one).as_deref(), Some("http://mirror/debian"));
        assert_eq!(mirror_from_one_line("deb http://plain/debian trixie main").as_deref(), Some("http://plain/debian"));
        assert_eq!(mirror_from_one_line("debfoo http://x/\n"), None);
    }

    #[test]
    fn private_directories_and_sources_line() {
        let apt = PrivateApt::new("/c/appstream-apt".into());
        assert_eq!(
            apt.dir_options(),
            [
                "Dir::Etc::SourceList=/c/appstream-apt/sources.list",
                "Dir::Etc::SourceParts=/dev/null",
                "Dir::State::Lists=/c/appstream-apt/lists",
                "Dir::Cache=/c/appstream-apt",
            ]
        );
        assert_eq!(
            deb_line("http://deb.debian.org/debian", "trixie"),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n"
        );
    }
}
