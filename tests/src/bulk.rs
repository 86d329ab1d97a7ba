//! nginx on each backend serving `/bulk` on port 8080: 10 MiB whose first line is the
//! backend's name, for transfers large enough to need many full-sized segments (and,
//! behind a small MTU, path MTU discovery). Fetched with curl.

use std::{
    net::IpAddr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{kill_and_reap, netns::sh, servers::Site};

pub const BULK_PORT: u16 = 8080;
/// Size of `/bulk`.
pub const BULK_BYTES: usize = 10 << 20;

/// The nginx of every site; stopped on drop.
pub struct Bulk {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Bulk {
    /// Starts nginx on every site; returns when each listens.
    pub fn start(sites: &[Site]) -> Bulk {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut children = Vec::new();
        for site in sites {
            let root = dir.path().join(&site.name);
            let www = root.join("www");
            std::fs::create_dir_all(&www).expect("nginx root");
            let mut body = format!("{}\n", site.name).into_bytes();
            body.resize(BULK_BYTES, b'.');
            std::fs::write(www.join("bulk"), body).expect("bulk file");
            let conf = format!(
                "user root;\nworker_processes 1;\npid {r}/nginx.pid;\nerror_log {r}/error.log;\n\
                 events {{}}\nhttp {{\n access_log off;\n server {{\n  listen {BULK_PORT};\n  \
                 listen [::]:{BULK_PORT};\n  root {r}/www;\n }}\n}}\n",
                r = root.display()
            );
            std::fs::write(root.join("nginx.conf"), conf).expect("nginx.conf");
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", site.ns))
                .args(["nginx", "-g", "daemon off;", "-p"])
                .arg(&root)
                .arg("-c")
                .arg(root.join("nginx.conf"))
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting nginx in {}: {e}", site.ns));
            children.push(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while sh(&format!(
                "ip netns exec {} ss -Hltn sport = :{BULK_PORT}",
                site.ns
            ))
            .trim()
            .is_empty()
            {
                assert!(
                    Instant::now() < deadline,
                    "nginx in {} did not listen",
                    site.ns
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        Bulk { children, dir }
    }

    /// `/bulk` fetched with curl from namespace `client_ns` through `vip` (at most
    /// `max` for the whole transfer): the backend that served it and the bytes received.
    pub fn fetch(
        &self,
        client_ns: &str,
        vip: IpAddr,
        max: Duration,
    ) -> Result<(String, usize), String> {
        let url = match vip {
            IpAddr::V4(a) => format!("http://{a}:{BULK_PORT}/bulk"),
            IpAddr::V6(a) => format!("http://[{a}]:{BULK_PORT}/bulk"),
        };
        let out = self.dir.path().join(format!("fetched-{client_ns}"));
        let status = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{client_ns}"))
            .args([
                "curl",
                "-sS",
                "-g",
                "--max-time",
                &max.as_secs().to_string(),
                "-o",
            ])
            .arg(&out)
            .arg(&url)
            .output()
            .map_err(|e| format!("running curl: {e}"))?;
        if !status.status.success() {
            return Err(format!(
                "curl {url}: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            ));
        }
        let body = std::fs::read(&out).map_err(|e| format!("reading {}: {e}", out.display()))?;
        let name = body
            .split(|&b| b == b'\n')
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        Ok((name, body.len()))
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGTERM: the master stops its workers (SIGKILL would leave them running).
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            kill_and_reap(c);
        }
    }
}
