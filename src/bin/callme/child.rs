//! A reference core in a child process, as `callme bench` and `callme soak` run it: started with
//! `callme core --report-ms`, it prints its addresses, then a line of counts every interval,
//! which [`CoreChild::latest`] gives back parsed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// The prefix of the counts line `callme core --report-ms` prints.
pub const REPORT: &str = "callme core: counts ";

/// A core in a child process; killed when dropped.
pub struct CoreChild {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// Its WebSocket URL.
    pub ws: String,
    latest: Arc<Mutex<Value>>,
}

impl CoreChild {
    /// Starts `callme core` on loopback with system-picked ports, reporting every `report`.
    pub fn spawn(report: Duration, env: &[(&str, &str)]) -> Result<CoreChild, String> {
        Self::spawn_with(report, env, &[])
    }

    /// [`CoreChild::spawn`] with more arguments for `callme core` (e.g. `--config FILE`).
    pub fn spawn_with(report: Duration, env: &[(&str, &str)], args: &[&str]) -> Result<CoreChild, String> {
        Self::spawn_at("127.0.0.1:0", 0, report, env, args)
    }

    /// [`CoreChild::spawn_with`] on these ports (to start a core again where one was).
    pub fn spawn_at(listen: &str, media_port: u16, report: Duration, env: &[(&str, &str)], args: &[&str]) -> Result<CoreChild, String> {
        let exe = std::env::current_exe().map_err(|e| format!("the running binary: {e}"))?;
        let mut cmd = Command::new(exe);
        let media_port = media_port.to_string();
        cmd.args(["core", "--listen", listen, "--media-port", &media_port, "--report-ms", &report.as_millis().to_string()]);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().map_err(|e| format!("cannot start the core: {e}"))?;
        let pid = child.id();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(ws) = first.split_whitespace().skip_while(|w| *w != "ws").nth(1).map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the core did not report its address: {first:?}"));
        };
        let latest = Arc::new(Mutex::new(Value::Null));
        let keep = latest.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(v) = line.strip_prefix(REPORT).and_then(|j| serde_json::from_str(j).ok()) {
                    *keep.lock().unwrap_or_else(|p| p.into_inner()) = v;
                }
            }
        });
        Ok(CoreChild { child, pid, ws, latest })
    }

    /// The latest counts the core reported (`Null` before the first).
    pub fn latest(&self) -> Value {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for CoreChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What /proc says of a process: CPU seconds (user + system), RSS in MiB, threads, open files.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    pub cpu_s: f64,
    pub rss_mib: f64,
    pub threads: u64,
    pub fds: u64,
}

/// Reads [`ProcUsage`] of `pid`.
pub fn proc_usage(pid: u32) -> ProcUsage {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    ProcUsage {
        cpu_s: cpu / ticks,
        rss_mib: field("VmRSS:").unwrap_or(0.0) / 1024.0,
        threads: field("Threads:").unwrap_or(0.0) as u64,
        fds,
    }
}
