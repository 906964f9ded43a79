//! Envoy as a child of `kvroute up`: a generated configuration (one cluster per pool's router,
//! one route per pool on `x-kvroute-pool`, the kvroute proxy-wasm filter), the process started,
//! its listener found, and the process killed when `up` ends.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// A running Envoy, killed on drop.
pub struct EnvoyChild {
    child: Child,
    pub listener: SocketAddr,
    _dir: tempdir::Dir,
}

impl Drop for EnvoyChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The `envoy` binary: `ENVOY_BIN`, else the first `envoy` on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("envoy")).find(|p| p.is_file())
}

/// The filter module: `CARGO_TARGET_DIR` or `target/`, release build for wasm32-wasip1.
pub fn find_wasm() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    let path = target.join("wasm32-wasip1/release/kvroute_filter.wasm");
    path.is_file().then(|| std::path::absolute(&path).unwrap_or(path))
}

fn cluster(name: &str, router: SocketAddr) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": 16 << 20,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": router.ip().to_string(), "port_value": router.port()}}}}
        ]}]},
    })
}

/// One pool as Envoy sees it: a cluster of one kv-router.
pub struct EnvoyPool {
    pub name: String,
    pub router: SocketAddr,
    /// The longest prompt its engines accept (the filter sends longer ones elsewhere).
    pub max_input_tokens: Option<u64>,
}

/// The configuration; the first pool is the fallback.
pub fn config(listen: SocketAddr, pools: &[EnvoyPool], wasm: &Path, block_size: u32) -> Value {
    let cluster_of = |name: &str| format!("router_{name}");
    let mut routes: Vec<Value> = pools
        .iter()
        .map(|p| {
            json!({"match": {"prefix": "/", "headers": [{"name": "x-kvroute-pool", "string_match": {"exact": p.name}}]},
                   "route": {"cluster": cluster_of(&p.name), "timeout": "0s"}})
        })
        .collect();
    routes.push(json!({"match": {"prefix": "/"}, "route": {"cluster": cluster_of(&pools[0].name), "timeout": "0s"}}));
    let filter_config = json!({
        "groups": pools.iter().map(|p| json!({"pool": p.name, "cluster": cluster_of(&p.name)})).collect::<Vec<_>>(),
        "pools": pools.iter().map(|p| json!({"name": p.name, "max_input_tokens": p.max_input_tokens})).collect::<Vec<_>>(),
        "policy": {"type": "kv_overlap", "block_size": block_size},
        "probe_timeout_ms": 100,
        "fallback_pool": pools[0].name,
    });
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "kvroute",
                "address": {"socket_address": {"address": listen.ip().to_string(), "port_value": listen.port()}},
                "per_connection_buffer_limit_bytes": 16 << 20,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "kvroute",
                        "route_config": {"name": "pools", "virtual_hosts": [{"name": "pools", "domains": ["*"], "routes": routes}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.wasm", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                "config": {
                                    "name": "kvroute", "root_id": "kvroute",
                                    "allow_on_headers_stop_iteration": true,
                                    "failure_policy": "FAIL_OPEN",
                                    "vm_config": {"vm_id": "kvroute", "runtime": "envoy.wasm.runtime.v8",
                                                  "code": {"local": {"filename": wasm.to_string_lossy()}}},
                                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter_config.to_string()},
                                }}},
                            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                        ],
                    },
                }]}],
            }],
            "clusters": pools.iter().map(|p| cluster(&cluster_of(&p.name), p.router)).collect::<Vec<_>>(),
        },
    })
}

/// Start Envoy with `config` and wait (bounded) until its listener accepts connections.
pub fn start(binary: &Path, config: &Value) -> anyhow::Result<EnvoyChild> {
    let dir = std::env::temp_dir().join(format!("kvroute-envoy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = tempdir::Dir(dir);
    let config_path = dir.0.join("envoy.json");
    let admin_path = dir.0.join("admin-address");
    std::fs::write(&config_path, config.to_string()).context("writing the Envoy configuration")?;
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&config_path)
        .args(["--concurrency", "1", "--log-level", "warn", "--base-id-path"])
        .arg(dir.0.join("base-id"))
        .arg("--use-dynamic-base-id")
        .arg("--admin-address-path")
        .arg(&admin_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let listener = loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("envoy exited ({status}): {}", err.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
        }
        if let Some(addr) = listener_address(&admin_path) {
            if std::net::TcpStream::connect(addr).is_ok() {
                break addr;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("envoy did not start listening within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(EnvoyChild { child, listener, _dir: dir })
}

/// The listener's bound address, from the admin endpoint (`/listeners?format=json`).
fn listener_address(admin_path: &Path) -> Option<SocketAddr> {
    use std::io::Write;
    let admin: SocketAddr = std::fs::read_to_string(admin_path).ok()?.trim().parse().ok()?;
    let mut stream = std::net::TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /listeners?format=json HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    // The body may be chunked: take the JSON object between the first `{` and the last `}`.
    let body = response.split("\r\n\r\n").nth(1)?;
    let body: Value = serde_json::from_str(&body[body.find('{')?..=body.rfind('}')?]).ok()?;
    let socket = &body["listener_statuses"][0]["local_address"]["socket_address"];
    format!("{}:{}", socket["address"].as_str()?, socket["port_value"].as_u64()?).parse().ok()
}
