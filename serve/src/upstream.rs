//! The client to the next hop (a router's to its workers, the global router's to the routers):
//! hyper's pooled HTTP/1 client, connections kept alive, Nagle off. Every call is a round trip
//! on a request's critical path, so it goes through hyper directly (reqwest's layers cost the
//! global router ≈ 60 µs per request with probes); an answer's body streams back as hyper gives
//! it, frame by frame.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Idle connections kept per router replica.
const IDLE_PER_HOST: usize = 64;
/// How long one service may take to list its models.
const MODELS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(IDLE_PER_HOST).build(connector);
        Upstream { client }
    }

    /// POST a JSON `body` to `url` with `headers`; the answer's head once it arrives.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response<Incoming>, String> {
        let mut request =
            Request::builder().method(Method::POST).uri(uri(url)?).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("{url}: {e}"))?;
        self.client.request(request).await.map_err(|e| format!("{url}: {e}"))
    }

    /// GET `url`, head and body, within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<(Response<()>, Bytes), String> {
        let request = Request::get(uri(url)?).body(Full::new(Bytes::new())).map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| format!("{url}: {e}"))?;
            let (head, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
            Ok((Response::from_parts(head, ()), body))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("{url}: no answer within {timeout:?}"))?
    }

    /// GET `url` within `timeout` and read a successful answer's JSON body.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str, timeout: Duration) -> Result<T, String> {
        let (head, body) = self.get(url, timeout).await?;
        if !head.status().is_success() {
            return Err(format!("{url}: answered {}", head.status()));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    }

    /// The models the services at `bases` serve, as one OpenAI `/v1/models` list: each one's
    /// list (asked in turn, 2 s each; one that fails or answers garbage is skipped), a model
    /// listed by several once.
    pub async fn merged_models(&self, bases: Vec<String>) -> Value {
        let mut data: Vec<Value> = Vec::new();
        for base in bases {
            let url = format!("{}/v1/models", base.trim_end_matches('/'));
            let Ok(list) = self.get_json::<Value>(&url, MODELS_TIMEOUT).await else { continue };
            for model in list["data"].as_array().into_iter().flatten() {
                if !data.iter().any(|d| d["id"] == model["id"]) {
                    data.push(model.clone());
                }
            }
        }
        json!({"object": "list", "data": data})
    }
}

/// The JSON body of a successful answer.
pub async fn json<T: DeserializeOwned>(response: Response<Incoming>) -> Result<T, String> {
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

fn uri(url: &str) -> Result<Uri, String> {
    url.parse().map_err(|e| format!("{url}: {e}"))
}
