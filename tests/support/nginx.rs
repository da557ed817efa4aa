//! nginx (Debian's nginx-light) as a lab backend: a real HTTP server for ApacheBench loads,
//! shared by the tests that need one (`conntrack.rs`, `xdp_forward.rs`).

use std::{
    net::{SocketAddrV4, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use dataplane_lab::{
    lab::{Child, Host},
    netns,
};

/// nginx serving `200 <body>` on a port of a host's namespace. Dropping it stops nginx, then
/// removes its directory (configuration, pid file, logs): fields drop in order.
pub struct Nginx {
    _child: Child,
    _dir: TempDir,
}

impl Nginx {
    /// Starts nginx on `port` in `host`'s namespace, answering every request with `body` and a
    /// newline; returns once it accepts connections.
    pub fn start(host: &Host, port: u16, body: &str) -> Nginx {
        let dir = TempDir::new(&format!("nginx-{}", host.name));
        let d = dir.0.display();
        let conf = dir.0.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; client_body_temp_path {d}/body; \
                 server {{ listen {port} reuseport backlog=4096; \
                 location / {{ return 200 \"{body}\\n\"; }} }} }}\n"
            ),
        )
        .unwrap();
        let child = Child::spawn(
            &host.ns,
            &["nginx", "-c", conf.to_str().unwrap(), "-g", "daemon off;"],
        )
        .expect("nginx (apt-get install nginx-light) must be installed");
        wait_accepting(host, port, &child);
        Nginx {
            _child: child,
            _dir: dir,
        }
    }
}

/// Ready when it answers: a TCP connection to `host:port` succeeds (10 s at most).
fn wait_accepting(host: &Host, port: u16, child: &Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddrV4::new(host.ip, port);
    while netns::in_netns(&host.ns, move || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200))
    })
    .unwrap()
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory of this test process (`dpl-<pid>-<tag>` in the temp dir), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("dpl-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
