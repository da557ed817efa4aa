//! Low-level network-namespace helpers: running commands, entering namespaces from threads,
//! background processes, sysctls, and clean-up of namespaces left behind by killed runs.
//!
//! Commands run inside a namespace through `nsenter --net=/run/netns/NAME` rather than
//! `ip netns exec`: the latter remounts /sys for the command, which hides /sys/fs/bpf and with it
//! every pinned BPF object.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Every lab name (namespace, pin directory) starts with this, followed by `<pid>-`.
pub const NAME_ROOT: &str = "dpl-";

/// Where `ip netns` keeps its named namespace mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Where the BPF filesystem is mounted; lab pin directories live below it.
pub const BPFFS_DIR: &str = "/sys/fs/bpf";

/// How long [`Child`] waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Path of the mount that keeps the named namespace `ns` alive.
pub fn ns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(ns)
}

/// Runs `argv` to completion and returns its stdout.
///
/// A non-zero exit is an error whose message carries the full command line, the exit status
/// and stderr, so that a failing lab setup step explains itself.
pub fn run(argv: &[&str]) -> Result<String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("run: empty argv"))?;
    log::debug!("run: {}", argv.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout_tail(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Tail of a failed command's stdout for error messages: some tools (ping) report there.
fn stdout_tail(stdout: &[u8]) -> String {
    const MAX: usize = 1000;
    let text = String::from_utf8_lossy(stdout);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text.char_indices().rev().nth(MAX).map_or(0, |(i, _)| i);
    format!(" [stdout: {}]", &text[start..])
}

/// The argv that runs `argv` inside namespace `ns` via nsenter.
fn nsenter_argv<'a>(net_arg: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["nsenter", net_arg, "--"];
    full.extend_from_slice(argv);
    full
}

/// Runs `argv` inside the named namespace `ns` (via nsenter) and returns its stdout.
pub fn run_in(ns: &str, argv: &[&str]) -> Result<String> {
    let net_arg = format!("--net={}", ns_path(ns).display());
    run(&nsenter_argv(&net_arg, argv))
}

/// Runs `ip -n ns ARGS...`; a shorthand used for almost every lab setup step.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    run(&argv)
}

/// Creates the named network namespace `ns`.
pub fn add_ns(ns: &str) -> Result<()> {
    run(&["ip", "netns", "add", ns]).map(drop)
}

/// Deletes the named network namespace `ns` (its mount and file under /run/netns).
///
/// The kernel frees the namespace, and with it every interface inside, once nothing else
/// (process, socket, open fd) refers to it; that is why callers kill the processes first.
pub fn del_ns(ns: &str) -> Result<()> {
    run(&["ip", "netns", "del", ns]).map(drop)
}

/// Names of all namespaces in /run/netns (empty if the directory does not exist yet).
pub fn list_ns() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Pids of the processes whose network namespace is `ns` (`ip netns pids`).
pub fn ns_pids(ns: &str) -> Result<Vec<i32>> {
    let out = run(&["ip", "netns", "pids", ns])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs every process living in `ns`, except this process itself.
///
/// Our own pid can show up when the main thread entered the namespace; killing it would end
/// the test run instead of cleaning it up.
pub fn kill_ns_processes(ns: &str) -> Result<()> {
    let me = std::process::id() as i32;
    for pid in ns_pids(ns)?.into_iter().filter(|&p| p != me) {
        log::debug!("killing pid {pid} left in namespace {ns}");
        // SAFETY: plain syscall with no memory arguments.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Ok(())
}

/// Runs `f` on a fresh thread that first joins namespace `ns`, and returns its result.
///
/// setns(CLONE_NEWNET) only affects the calling thread, so the caller's own namespace is never
/// touched. Sockets created inside `f` stay in `ns` for their whole life, even when they are
/// later used from other threads: that is how servers and clients of the lab work.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = ns_path(ns);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<T> {
            // SAFETY: `file` is an open namespace fd that outlives the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let err = std::io::Error::last_os_error();
                bail!("setns({}) failed: {err}", path.display());
            }
            drop(file);
            Ok(f())
        })
        .context("cannot spawn namespace thread")?;
    handle
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
}

/// Writes sysctls inside namespace `ns`; keys use the dotted form (`net.ipv4.ip_forward`).
///
/// Written from a thread inside the namespace: /proc/sys/net resolves against the writing
/// thread's network namespace, so this needs no helper process per value.
pub fn set_sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let owned: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ns_name = ns.to_string();
    in_netns(ns, move || -> Result<()> {
        for (key, value) in &owned {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value)
                .with_context(|| format!("sysctl {key}={value} in namespace {ns_name}"))?;
        }
        Ok(())
    })?
}

/// Reads one sysctl (dotted key) inside namespace `ns`.
pub fn get_sysctl(ns: &str, key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, move || std::fs::read_to_string(&path))?
        .map(|v| v.trim().to_string())
        .with_context(|| format!("reading sysctl {key} in namespace {ns}"))
}

/// Output of a background process, collected by a reader thread.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts a thread that copies `src` into a shared buffer until EOF.
    fn start(mut src: impl Read + Send + 'static) -> Capture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = src.read(&mut chunk) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
        Capture {
            buf,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits for EOF; only call once the process has exited (its pipe end is then closed,
    /// unless it left children behind holding it, hence the bounded wait).
    fn finish(&mut self) {
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

/// The process handle shared between a [`Child`] and the lab that must kill it on teardown.
pub(crate) type SharedProcess = Arc<Mutex<std::process::Child>>;

/// A background process running inside a namespace, with captured stdout and stderr.
///
/// Dropping it terminates the process (SIGTERM, then SIGKILL after [`TERM_GRACE`]), so a test
/// that fails half-way never leaves a tcpdump or agent running.
pub struct Child {
    process: SharedProcess,
    pid: u32,
    cmdline: String,
    stdout: Capture,
    stderr: Capture,
}

impl Child {
    /// Starts `argv` inside namespace `ns`; nsenter execs the program, so [`Child::pid`] is the
    /// program's own pid and signals reach it directly.
    pub fn spawn(ns: &str, argv: &[&str]) -> Result<Child> {
        if argv.is_empty() {
            bail!("spawn in {ns}: empty argv");
        }
        let net_arg = format!("--net={}", ns_path(ns).display());
        let full = nsenter_argv(&net_arg, argv);
        let cmdline = full.join(" ");
        log::debug!("spawn: {cmdline}");
        let mut process = Command::new(full[0])
            .args(&full[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{cmdline}`"))?;
        let stdout = Capture::start(process.stdout.take().expect("piped stdout"));
        let stderr = Capture::start(process.stderr.take().expect("piped stderr"));
        Ok(Child {
            pid: process.id(),
            process: Arc::new(Mutex::new(process)),
            cmdline,
            stdout,
            stderr,
        })
    }

    /// The process id (of the program itself, not of a wrapper).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The full command line, nsenter included, for messages.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    pub(crate) fn shared(&self) -> &SharedProcess {
        &self.process
    }

    /// Exit status if the process has ended, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = lock(&self.process).try_wait().context("try_wait")?;
        if status.is_some() {
            self.finish_capture();
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let status = wait_deadline(&self.process, Instant::now() + timeout)?;
        if status.is_some() {
            self.finish_capture();
        }
        Ok(status)
    }

    /// Stops the process (SIGTERM, SIGKILL after [`TERM_GRACE`]) and returns how it ended.
    pub fn stop(mut self) -> Result<ExitStatus> {
        let status = terminate(&self.process)?;
        self.finish_capture();
        Ok(status)
    }

    /// Everything the process wrote to stdout so far (all of it once it has exited).
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Everything the process wrote to stderr so far (all of it once it has exited).
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    fn finish_capture(&mut self) {
        self.stdout.finish();
        self.stderr.finish();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = terminate(&self.process) {
            log::warn!("stopping `{}`: {e:#}", self.cmdline);
        }
    }
}

fn lock(process: &SharedProcess) -> std::sync::MutexGuard<'_, std::process::Child> {
    process.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls until the process exits or `deadline` passes.
fn wait_deadline(process: &SharedProcess, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = lock(process).try_wait().context("try_wait")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM if the process still runs. The process is never reaped here, so its pid
/// cannot have been reused by an unrelated process.
pub(crate) fn send_term(process: &SharedProcess) {
    let mut guard = lock(process);
    if let Ok(None) = guard.try_wait() {
        // SAFETY: plain syscall; the pid is our unreaped child.
        unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
    }
}

/// SIGTERM, wait up to [`TERM_GRACE`], then SIGKILL and reap.
pub(crate) fn terminate(process: &SharedProcess) -> Result<ExitStatus> {
    send_term(process);
    if let Some(status) = wait_deadline(process, Instant::now() + TERM_GRACE)? {
        return Ok(status);
    }
    let mut guard = lock(process);
    log::warn!("pid {} ignored SIGTERM, sending SIGKILL", guard.id());
    guard.kill().context("SIGKILL")?;
    guard.wait().context("wait after SIGKILL")
}

/// Is `pid` a live process? (Zombies count as live: their pid is still taken.)
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Pid encoded in a lab name `dpl-<pid>-...`, if `name` is one.
pub fn lab_name_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_ROOT)?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Removes namespaces and bpffs pin directories of labs whose process is gone.
///
/// A test run killed with SIGKILL (or a crashed process) never runs its destructors; the next
/// lab cleans up after it so that leftovers cannot pile up or collide.
pub fn remove_stale() {
    for ns in list_ns() {
        if let Some(pid) = lab_name_pid(&ns).filter(|&p| !pid_alive(p)) {
            log::info!("removing stale lab namespace {ns} (pid {pid} is gone)");
            if let Err(e) = kill_ns_processes(&ns).and_then(|_| del_ns(&ns)) {
                // Another process may be removing the same leftovers right now.
                log::warn!("removing stale namespace {ns}: {e:#}");
            }
        }
    }
    let Ok(dir) = std::fs::read_dir(BPFFS_DIR) else {
        return;
    };
    for entry in dir.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = lab_name_pid(&name).filter(|&p| !pid_alive(p)) {
            log::info!("removing stale pin dir {name} (pid {pid} is gone)");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                log::warn!("removing stale pin dir {}: {e}", entry.path().display());
            }
        }
    }
}

/// Mounts the BPF filesystem on /sys/fs/bpf unless it is already mounted there.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS_DIR) && fields.next() == Some("bpf")
    });
    if !mounted {
        log::info!("mounting bpffs on {BPFFS_DIR}");
        run(&["mount", "-t", "bpf", "bpf", BPFFS_DIR])?;
    }
    Ok(())
}

/// An exclusive flock on a file, released on drop. Serialises lab-wide setup steps (stale
/// clean-up, bpffs mount, namespace creation) between threads and processes.
pub struct GlobalLock {
    _file: File,
}

impl GlobalLock {
    /// Path of the lock file shared by every lab on the machine.
    pub const PATH: &'static str = "/run/dpl-lab.lock";

    /// Blocks until the lock is held.
    pub fn acquire() -> Result<GlobalLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::PATH)
            .with_context(|| format!("opening {}", Self::PATH))?;
        // SAFETY: valid fd owned by `file`. Each open() gives its own open file description,
        // so flock also excludes other threads of this process.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock {}: {}", Self::PATH, std::io::Error::last_os_error());
        }
        Ok(GlobalLock { _file: file })
    }
}
