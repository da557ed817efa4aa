//! An OCI image layout (image-spec v1.1 `image-layout.md`) written from files, without a
//! container engine or a base image: `oci-layout`, `index.json` and content-addressed blobs
//! (gzipped layer tars, the image config, the manifest) under `blobs/sha256/`. The tars are
//! reproducible (sorted names, uid/gid 0, mtime 0; gzip without a name or time stamp), so the
//! same binary gives the same digests. Uses `tar`, `gzip` and `sha256sum` (coreutils).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::ebpf::{output, run};

/// What goes into the image.
pub struct Image {
    pub version: String,
    /// The static agent, shipped as /usr/local/bin/dataplane.
    pub binary: PathBuf,
    /// iproute2's `ip`, shipped as /usr/sbin/ip with the shared libraries `ldd` names.
    pub ip_tool: PathBuf,
}

/// A blob written to the layout: its digest and size.
struct Blob {
    digest: String,
    size: u64,
}

impl Image {
    /// Writes the layout into `dir` (created); returns the manifest's digest.
    pub fn write_layout(&self, dir: &Path) -> Result<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let stage = dir.with_extension("stage");
        let _ = std::fs::remove_dir_all(&stage);

        let bin_root = stage.join("dataplane");
        install(&self.binary, &bin_root.join("usr/local/bin/dataplane"))?;
        let ip_root = stage.join("iproute2");
        install(&self.ip_tool, &ip_root.join("usr/sbin/ip"))?;
        for lib in shared_libraries(&self.ip_tool)? {
            install(&lib, &ip_root.join(lib.strip_prefix("/")?))?;
        }
        let layers = [
            layer(&bin_root, &stage.join("dataplane.tar"), &blobs)?,
            layer(&ip_root, &stage.join("iproute2.tar"), &blobs)?,
        ];
        std::fs::remove_dir_all(&stage)?;

        let diff_ids: Vec<String> = layers.iter().map(|(_, d)| format!("\"{d}\"")).collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/usr/local/bin/dataplane"],"Cmd":["--help"],"Labels":{{"org.opencontainers.image.title":"dataplane","org.opencontainers.image.version":"{v}"}}}},"rootfs":{{"type":"layers","diff_ids":[{ids}]}},"history":[{{"created_by":"cargo xtask release: the static dataplane binary"}},{{"created_by":"cargo xtask release: iproute2 ip and its libraries"}}]}}"#,
            v = self.version,
            ids = diff_ids.join(","),
        );
        let config = put(&blobs, config.as_bytes())?;
        let layer_descs: Vec<String> = layers
            .iter()
            .map(|(b, _)| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}"#,
                    b.digest, b.size
                )
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}],"annotations":{{"org.opencontainers.image.version":"{}"}}}}"#,
            config.digest,
            config.size,
            layer_descs.join(","),
            self.version
        );
        let manifest = put(&blobs, manifest.as_bytes())?;
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"org.opencontainers.image.ref.name":"{}"}}}}]}}"#,
            manifest.digest, manifest.size, self.version
        );
        std::fs::write(dir.join("index.json"), index)?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(manifest.digest)
    }
}

/// Copies `from` (following symlinks) to `to`, creating directories, mode 0755.
fn install(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().context("no parent")?)?;
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The absolute paths `ldd` resolves for `program`, the dynamic loader included.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(program))?;
    let libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    if libs.is_empty() {
        bail!("ldd names no libraries for {}: {text}", program.display());
    }
    Ok(libs)
}

/// Tars `root` reproducibly into `tar`, gzips it into the blobs; returns the blob and the
/// layer's diff ID (the digest of the uncompressed tar).
fn layer(root: &Path, tar: &Path, blobs: &Path) -> Result<(Blob, String)> {
    let mut entries: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    entries.sort();
    let mut cmd = Command::new("tar");
    cmd.args([
        "--create",
        "--format=gnu",
        "--sort=name",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--mtime=@0",
        "--file",
    ])
    .arg(tar)
    .arg("--directory")
    .arg(root)
    .args(&entries);
    run(&mut cmd)?;
    let diff_id = sha256_file(tar)?;
    let gz = tar.with_extension("tar.gz");
    let status = Command::new("gzip")
        .args(["-n", "-c"])
        .arg(tar)
        .stdout(Stdio::from(File::create(&gz)?))
        .status()
        .context("running gzip")?;
    if !status.success() {
        bail!("gzip {} failed ({status})", tar.display());
    }
    let blob = put(blobs, &std::fs::read(&gz)?)?;
    Ok((blob, diff_id))
}

/// Stores `data` under its digest.
fn put(blobs: &Path, data: &[u8]) -> Result<Blob> {
    let tmp = blobs.join(".incoming");
    std::fs::write(&tmp, data)?;
    let digest = sha256_file(&tmp)?;
    let hex = digest.trim_start_matches("sha256:");
    std::fs::rename(&tmp, blobs.join(hex))?;
    Ok(Blob {
        digest,
        size: data.len() as u64,
    })
}

/// `sha256:<hex>` of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let text = output(Command::new("sha256sum").arg(path))?;
    let hex = text.split_whitespace().next().unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256sum {}: {text}", path.display());
    }
    Ok(format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_names_its_blobs_by_digest_and_is_reproducible() {
        let base = std::env::temp_dir().join(format!("xtask-oci-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let binary = base.join("dataplane");
        std::fs::write(&binary, b"not really a binary").unwrap();
        let image = Image {
            version: "9.9.9".into(),
            binary,
            ip_tool: ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .expect("iproute2"),
        };
        let first = image.write_layout(&base.join("a")).unwrap();
        let again = image.write_layout(&base.join("b")).unwrap();
        assert_eq!(first, again, "same input, same manifest digest");
        let blobs = base.join("a/blobs/sha256");
        let names: Vec<_> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(names.len(), 4, "config, manifest, two layers: {names:?}");
        for blob in &names {
            let hex = blob.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(sha256_file(blob).unwrap(), format!("sha256:{hex}"));
        }
        let index = std::fs::read_to_string(base.join("a/index.json")).unwrap();
        assert!(
            index.contains(&first)
                && index.contains(r#""org.opencontainers.image.ref.name":"9.9.9""#)
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
