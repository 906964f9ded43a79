//! Test support: start `kvroute` subcommands as real processes on loopback with ephemeral
//! ports, read where they listen, and kill them when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process killed on drop.
pub struct Process {
    child: Child,
    /// The JSON line the process printed when ready.
    pub ready: Value,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Send the process a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait (at most `limit`) for the process to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `kvroute <args>`, logging warnings and errors only.
pub fn kvroute(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvroute"));
    command.args(args).env("RUST_LOG", "warn");
    command
}

/// Run `kvroute <args>` and wait (bounded) for its ready line on stdout.
pub fn spawn(args: &[&str]) -> Process {
    let mut child = kvroute(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("kvroute starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("kvroute {args:?} did not report ready within 30 s");
        }
    };
    let ready: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("bad ready line {line:?}: {e}"));
    Process { child, ready }
}

/// A mocker on ephemeral ports.
pub fn mocker(extra: &[&str]) -> Process {
    let mut args = vec!["mocker", "--port", "0", "--kv-events-port", "0"];
    args.extend_from_slice(extra);
    spawn(&args)
}

impl Process {
    pub fn http(&self) -> String {
        self.ready["mocker"]["http"].as_str().expect("http address").to_owned()
    }

    pub fn kv_events(&self, rank: usize) -> String {
        self.ready["mocker"]["kv_events"][rank]["events"].as_str().expect("kv events endpoint").to_owned()
    }

    pub fn kv_replay(&self, rank: usize) -> String {
        self.ready["mocker"]["kv_events"][rank]["replay"].as_str().expect("replay endpoint").to_owned()
    }
}

/// Poll `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A kv-router on an ephemeral port in front of `workers` (subscribed to their KV events and
/// told where their replay sockets are, so it misses nothing published before it subscribed).
pub fn kv_router(workers: &[&Process], extra: &[&str]) -> Process {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("kvroute-test-router-{}-{n}.yaml", std::process::id()));
    let entries: Vec<String> = workers
        .iter()
        .map(|w| {
            format!("  - {{url: {}, kv_events: [{}], kv_replay: [{}]}}\n", w.http(), w.kv_events(0), w.kv_replay(0))
        })
        .collect();
    std::fs::write(&file, format!("workers:\n{}", entries.concat())).expect("router config written");
    let mut args: Vec<&str> = vec![
        "kv-router",
        "--http-port",
        "0",
        "--health-interval-ms",
        "200",
        "--config",
        file.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let router = spawn(&args);
    let _ = std::fs::remove_file(&file);
    router
}

impl Process {
    pub fn router_http(&self) -> String {
        self.ready["kv_router"]["http"].as_str().expect("router http address").to_owned()
    }

    /// Stop the process now (a crashed worker).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST a JSON body and read the JSON answer (tests only: panics on transport errors).
pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    client.post(url).json(body).send().await.expect("request sent").json().await.expect("JSON answer")
}

/// A Prometheus sample's value from `{base}/metrics` (0 if absent): `name` is the sample's
/// name with its labels as printed (`kvroute_x_total{how="resumed"}`), or without them for the
/// first sample of that name.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics text");
    let sample = |n: &str| n == name || n.strip_prefix(name).is_some_and(|labels| labels.starts_with('{'));
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(n, _)| sample(n))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// A `nats-server` with JetStream on an ephemeral loopback port, killed (and its storage
/// removed) on drop.
pub struct NatsServer {
    child: Child,
    store: std::path::PathBuf,
    /// `nats://127.0.0.1:<port>`
    pub url: String,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Start `nats-server` (`NATS_SERVER_BIN`, else on PATH or in /usr/sbin, where Debian puts it).
/// None when it is not installed — unless `KVROUTE_REQUIRE_NATS` is set (the test script sets
/// it after installing the server), then missing it is a failure.
pub fn nats_server() -> Option<NatsServer> {
    start_nats("-1", None) // the server picks a free port and logs it
}

/// [`nats_server`] accepting messages of at most `bytes` (NATS's default is 1 MB).
pub fn nats_server_with_max_payload(bytes: usize) -> Option<NatsServer> {
    nats_server_with_config(&format!("max_payload: {bytes}\n"))
}

/// [`nats_server`] with more of nats-server's config file (e.g. JetStream limits).
pub fn nats_server_with_config(config: &str) -> Option<NatsServer> {
    start_nats("-1", Some(config))
}

/// A free loopback port (for a server started later on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// [`nats_server`] on a given port.
pub fn nats_server_on(port: u16) -> Option<NatsServer> {
    start_nats(&port.to_string(), None)
}

/// Start nats-server with JetStream on `port`, with `config` (nats-server's config file
/// syntax) if given.
fn start_nats(port: &str, config: Option<&str>) -> Option<NatsServer> {
    let candidates = std::env::var("NATS_SERVER_BIN")
        .into_iter()
        .chain(["nats-server".to_owned(), "/usr/sbin/nats-server".to_owned()]);
    let binary =
        candidates.into_iter().find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(binary) = binary else {
        assert!(
            std::env::var_os("KVROUTE_REQUIRE_NATS").is_none(),
            "nats-server not found (set NATS_SERVER_BIN, or run ./scripts/test, which installs it)"
        );
        eprintln!("skipped: nats-server not found (./scripts/test installs it)");
        return None;
    };
    static STORES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let store = std::env::temp_dir().join(format!("kvroute-nats-{}-{n}", std::process::id()));
    let mut command = Command::new(&binary);
    if let Some(config) = config {
        std::fs::create_dir_all(&store).expect("nats store directory");
        let file = store.join("kvroute-test.conf");
        std::fs::write(&file, config).expect("nats config written");
        command.arg("-c").arg(file);
    }
    let mut child = command
        .args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.split("Listening for client connections on ").nth(1) {
                let _ = tx.send(at.trim().to_owned());
            }
        }
    });
    let Ok(address) = rx.recv_timeout(Duration::from_secs(10)) else {
        let _ = child.kill();
        panic!("nats-server did not report its client port within 10 s");
    };
    Some(NatsServer { child, store, url: format!("nats://{address}") })
}
