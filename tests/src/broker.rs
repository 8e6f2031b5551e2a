//! A tansu broker of a test's own, on a free loopback port, that the test can freeze with
//! SIGSTOP (an outage the broker cannot see coming) and thaw with SIGCONT.
//!
//! The binary comes from the tool cache: `$OUTBOX_TANSU_BIN`, else `$OUTBOX_TOOLS/bin/tansu`,
//! else `~/.cache/outbox-tools/bin/tansu` (`scripts/tansu.sh install`).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unavailable;

/// A memory-storage tansu of the test's own, killed (and thawed first) when dropped.
#[derive(Debug)]
pub struct OwnBroker {
    child: Child,
    /// Its bootstrap address, `127.0.0.1:port`.
    pub url: String,
}

impl OwnBroker {
    /// Sends `signal` (`-STOP`, `-CONT`) to the broker process; panics when that fails.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_bin() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("OUTBOX_TANSU_BIN") {
        return bin.into();
    }
    let tools = std::env::var("OUTBOX_TOOLS").map_or_else(
        |_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/outbox-tools")
        },
        std::path::PathBuf::from,
    );
    tools.join("bin/tansu")
}

/// Starts a memory-storage tansu on a free loopback port; `None` (after printing why) when the
/// binary is missing outside CI.
pub fn start_own_broker() -> Option<OwnBroker> {
    let bin = tansu_bin();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = match Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return unavailable(
                &format!("tansu binary {} (scripts/tansu.sh install)", bin.display()),
                &e,
            );
        }
    };
    let broker = OwnBroker {
        child,
        url: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&broker.url).is_err() {
        assert!(
            Instant::now() < deadline,
            "own tansu did not listen on {url}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(broker)
}
