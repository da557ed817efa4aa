//! sysctls of the calling thread's network namespace (`/proc/sys/net` follows the thread's
//! namespace, the rest is the host's).

use anyhow::{bail, Context, Result};

/// `/proc/sys/<key>` (`net/ipv4/ip_default_ttl`), trimmed.
pub fn read(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

/// Writes `value` to `/proc/sys/<key>`.
pub fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
}

/// `net.ipv4.ip_local_port_range`.
pub fn local_port_range() -> Result<(u16, u16)> {
    let text = read("net/ipv4/ip_local_port_range")?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(min)), Some(Ok(max))) => Ok((min, max)),
        _ => bail!("ip_local_port_range {text:?} is not two ports"),
    }
}

/// `net.ipv4.ip_default_ttl`.
pub fn default_ttl() -> Result<u8> {
    read("net/ipv4/ip_default_ttl")?
        .parse()
        .context("ip_default_ttl")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_namespace() {
        let (min, max) = super::local_port_range().unwrap();
        assert!(min <= max);
        assert!(super::default_ttl().unwrap() > 0);
    }
}
