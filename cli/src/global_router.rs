//! `kvroute global-router --config FILE`: the YAML file → [`GlobalRouterConfig`], start, report.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kvroute_global_router::{self as global, GlobalRouterConfig};

use crate::kv_router::load_tokenizer;

#[derive(Args, Debug)]
pub struct GlobalRouterArgs {
    /// YAML configuration: `pools` (name, routers, model, priority, weight, limits), `policy`
    /// (kv_overlap, grid, weighted, round_robin, least_loaded), timeouts. See
    /// examples/global-router.yaml.
    #[arg(long, env = "KVROUTE_GLOBAL_CONFIG")]
    config: PathBuf,
    /// Address to listen on (overrides the file).
    #[arg(long, env = "KVROUTE_HOST")]
    host: Option<IpAddr>,
    /// HTTP port (overrides the file; 0: any free port, printed).
    #[arg(long, alias = "port", env = "KVROUTE_HTTP_PORT")]
    http_port: Option<u16>,
    /// HF tokenizer.json, for policies that need the prompt length (grid).
    #[arg(long, env = "KVROUTE_TOKENIZER")]
    tokenizer: Option<PathBuf>,
    /// Chat template file.
    #[arg(long, env = "KVROUTE_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
}

pub fn load(path: &PathBuf) -> anyhow::Result<GlobalRouterConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: GlobalRouterConfig =
        serde_yaml::from_str(&text).with_context(|| format!("{}: invalid global router config", path.display()))?;
    config.validate().with_context(|| format!("{}: invalid global router config", path.display()))?;
    Ok(config)
}

pub async fn run(args: GlobalRouterArgs) -> anyhow::Result<()> {
    let mut config = load(&args.config)?;
    if let Some(h) = args.host {
        config.host = h;
    }
    if let Some(p) = args.http_port {
        config.http_port = p;
    }
    let tokenizer = Arc::new(load_tokenizer(args.tokenizer.as_ref(), args.chat_template.as_ref())?);
    let running = global::start(config.clone(), tokenizer).await.context("starting the global router")?;
    println!("{}", serde_json::json!({"global_router": {"http": format!("http://{}", running.http_addr)}}));
    tracing::info!(http = %running.http_addr, pools = config.pools.len(), policy = config.policy.name(), "global router listening");
    crate::serve_until_stopped("global router").await
}
