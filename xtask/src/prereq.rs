//! The machine's prerequisites for `test`, `lab` and `bench`: the Debian packages listed in
//! `.ci/packages` (the same list `.ci/run` installs), checked by one command each package
//! installs. As root on Debian/Ubuntu what is missing is installed with apt-get; elsewhere the
//! command fails naming exactly what is missing and how to install it.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// `.ci/packages`, compiled in: `<package> <command>` per line, `#` comments.
const PACKAGES: &str = include_str!("../../.ci/packages");

fn listed() -> Vec<(&'static str, &'static str)> {
    PACKAGES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?))
        })
        .collect()
}

fn on_path(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Root's tools live in sbin directories a user's PATH may lack.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|d| d.join(cmd).is_file())
}

/// The listed packages whose command is not installed.
pub fn missing() -> Vec<&'static str> {
    listed()
        .into_iter()
        .filter(|(_, cmd)| !on_path(cmd))
        .map(|(pkg, _)| pkg)
        .collect()
}

/// Installs (root on Debian/Ubuntu) or names what is missing.
pub fn ensure(is_root: bool) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root || !Path::new("/etc/debian_version").exists() {
        bail!(
            "missing packages: {} (Debian names; on Debian/Ubuntu as root: `{install}`)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!(
                "`apt-get {}` failed ({status}); try `{install}`",
                args.join(" ")
            );
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    // nginx's package starts a server on the host where an init system runs; the lab starts
    // its own inside namespaces.
    if missing.contains(&"nginx-light") {
        let _ = Command::new("pkill").args(["-x", "nginx"]).status();
    }
    let still = self::missing();
    if !still.is_empty() {
        bail!("still missing after apt-get: {}", still.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_line_names_a_package_and_a_command() {
        let all = super::listed();
        assert!(all.len() >= 10);
        assert!(all.iter().any(|(p, c)| *p == "bpftool" && *c == "bpftool"));
    }
}
