//! The release artifacts of `cargo xtask release` (which `cargo xtask test` builds first and
//! names in `DATAPLANE_RELEASE_DIR`): the static binary asks for no program interpreter and runs
//! in a chroot holding nothing else; the OCI image layout's blobs match their digests and
//! sizes, its layers unpack into a root file system where the agent and `ip` run. Needs root
//! (chroot).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("DATAPLANE_RELEASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release-artifacts")
        });
    assert!(
        dir.join("oci/index.json").is_file(),
        "no release artifacts in {}: run `cargo xtask release` (or `cargo xtask test`)",
        dir.display()
    );
    dir
}

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let text = run(&["sha256sum", path.to_str().unwrap()]);
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// The blob a descriptor names, checked against the descriptor's digest and size.
fn blob(layout: &Path, desc: &Value) -> PathBuf {
    let digest = desc["digest"].as_str().expect("digest");
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    assert_eq!(sha256(&path), digest, "blob {}", path.display());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        desc["size"].as_u64().expect("size"),
        "size of {digest}"
    );
    path
}

/// A directory removed when dropped (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("dataplane-release-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_static_binary_and_the_oci_image_run_on_an_empty_root() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (chroot)");
    let dir = artifacts();
    let version = env!("CARGO_PKG_VERSION");
    let bin = dir.join(format!("dataplane-{version}-x86_64-linux-musl"));

    // Static: no PT_INTERP, no NEEDED libraries; the checksum file matches.
    let headers = run(&[
        "readelf",
        "--program-headers",
        "--dynamic",
        bin.to_str().unwrap(),
    ]);
    assert!(!headers.contains("INTERP"), "{headers}");
    assert!(!headers.contains("(NEEDED)"), "{headers}");
    let sums =
        std::fs::read_to_string(dir.join(format!("dataplane-{version}-x86_64-linux-musl.sha256")))
            .unwrap();
    assert_eq!(
        format!("sha256:{}", sums.split_whitespace().next().unwrap()),
        sha256(&bin)
    );

    // Alone in a root file system.
    let root = Scratch::new("bin");
    std::fs::copy(&bin, root.0.join("dataplane")).unwrap();
    let shown = run(&[
        "chroot",
        root.0.to_str().unwrap(),
        "/dataplane",
        "--version",
    ]);
    assert_eq!(shown.trim(), format!("dataplane {version}"));

    // The image layout.
    let layout = dir.join("oci");
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        version
    );
    let manifest = json(&blob(&layout, &manifests[0]));
    assert_eq!(manifest["schemaVersion"], 2);
    let config = json(&blob(&layout, &manifest["config"]));
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/usr/local/bin/dataplane"
    );
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());

    // Unpacked in order, the layers are a root file system the agent and its `ip` run in.
    let rootfs = Scratch::new("rootfs");
    let rootfs_s = rootfs.0.to_str().unwrap();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let gz = blob(&layout, layer);
        let tar = rootfs.0.join("layer.tar");
        let plain = Command::new("gzip")
            .args(["-dc", gz.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(plain.status.success());
        std::fs::write(&tar, &plain.stdout).unwrap();
        assert_eq!(
            sha256(&tar),
            diff_id.as_str().unwrap(),
            "diff ID of {}",
            layer["digest"]
        );
        run(&["tar", "-xf", tar.to_str().unwrap(), "-C", rootfs_s]);
        std::fs::remove_file(&tar).unwrap();
    }
    let shown = run(&["chroot", rootfs_s, "/usr/local/bin/dataplane", "--version"]);
    assert_eq!(shown.trim(), format!("dataplane {version}"));
    let ip = run(&["chroot", rootfs_s, "/usr/sbin/ip", "-V"]);
    assert!(ip.contains("iproute2"), "{ip}");
}
