//! A real etcd (Debian's `etcd-server`) for a test: one member on loopback ports in a temporary data
//! directory, stopped and removed on drop (also on panic). Stop and start it again in place to test
//! a replica losing its store. Under `WEFT_E2E_REQUIRE=1` a missing `etcd` fails the test.

use crate::net::free_addr;
use crate::pki::TempDir;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdProc {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: TempDir,
}

pub(crate) fn etcd_binary() -> Option<std::path::PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// Whether etcd is installed; when not, the test skips with a message, or fails under
/// `WEFT_E2E_REQUIRE=1`.
pub fn available(tag: &str) -> bool {
    if etcd_binary().is_some() {
        return true;
    }
    let msg = format!("{tag}: etcd is not installed (apt-get install etcd-server)");
    if std::env::var("WEFT_E2E_REQUIRE").as_deref() == Ok("1") {
        panic!("{msg} (WEFT_E2E_REQUIRE=1)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

impl EtcdProc {
    /// A fresh member; `None` (the test skips) when etcd is not installed and `WEFT_E2E_REQUIRE`
    /// is not set.
    pub fn start(tag: &str) -> Option<EtcdProc> {
        if !available(tag) {
            return None;
        }
        let mut e = EtcdProc {
            child: None,
            client: free_addr(),
            peer: free_addr(),
            dir: TempDir::new(&format!("etcd-{tag}")),
        };
        e.spawn();
        Some(e)
    }

    /// A store key file (`--store-key-file`) for the replicas of a mesh on this etcd: made on first
    /// use in the member's temporary directory, mode 0600, the same file for every replica.
    pub fn key_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("store.key");
        if !path.exists() {
            weft_control::store_key::generate(&path).expect("write a store key");
        }
        path
    }

    /// `etcd://HOST:PORT` for `weft-control --store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.client)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("open etcd log");
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let child = Command::new(etcd_binary().expect("etcd"))
            .args(["--name", "weft-test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("weft-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20));
    }

    /// Waits until etcd answers a health check (its HTTP /health on the client port).
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited during start-up ({status}):\n{}", self.log());
            }
            if self.healthy() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not ready within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.client, Duration::from_secs(1))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.client
        );
        let mut buf = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut buf).is_ok()
            && buf.contains("\"health\":\"true\"")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The member's process id while it runs (for a benchmark reading its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops it (SIGKILL); its data stays for [`EtcdProc::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.stop();
    }
}
