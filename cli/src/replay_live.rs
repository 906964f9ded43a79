//! `kvroute replay --target URL`: the live mode. The trace's requests go over HTTP to a running
//! stack (a kv-router, the global router, Envoy or a single mocker) at their arrival times.
//!
//! Owns the client side only: scheduling (open loop: each request is due at `arrival_ms` after
//! the start, whatever the earlier ones are doing), the streaming `/v1/completions` call, reading
//! the SSE answer, and the per-request record (TTFT, end-to-end latency, cached prompt tokens
//! from `usage`, the worker and pool from the routers' `x-kvroute-*` response headers). The
//! summary table is [`kvroute_replay::Summary`]'s, the same as offline; trace loading and
//! expansion are [`kvroute_replay::trace`]'s. Failures (connect, HTTP status, broken stream,
//! timeout) are recorded per request, never a panic; the command exits non-zero when any
//! request failed, after printing the summary.
//!
//! Latencies count from the request's *scheduled* arrival, so a client that fell behind (at
//! `--max-in-flight`) does not hide the wait (no coordinated omission); how late requests were
//! sent is reported beside the table.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvroute_replay::{trace, ReplayRequest, RequestRecord, Summary, TraceOptions};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// A request sent this long after its scheduled arrival counts as late in the report.
const LATE_MS: f64 = 10.0;

#[derive(Args, Debug)]
#[command(next_help_heading = "Live mode (without --offline)")]
pub struct LiveArgs {
    /// Send the trace to this OpenAI base URL (http://; a kv-router, the global router, Envoy or
    /// one mocker) as streaming /v1/completions at the trace's times. Required unless --offline;
    /// the simulation flags (--workers, --router-mode, --block-size, …) do not apply: the
    /// target's own settings do.
    #[arg(long, value_name = "URL", conflicts_with = "offline")]
    target: Option<String>,
    /// The `model` of every request (the mocker serves `kvroute-mock` unless told otherwise).
    #[arg(long, default_value = "kvroute-mock")]
    model: String,
    /// Most requests outstanding at once. When reached, the next request waits for one to
    /// finish and is sent late; its latencies still count from its scheduled arrival, and the
    /// number sent late is reported.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Give up on a request after this many seconds (it counts as failed).
    #[arg(long, default_value_t = 600.0)]
    request_timeout_s: f64,
    /// Also write one JSON object per request (trace order) to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// What happened to one live request. Times are milliseconds from the start of the run.
#[derive(Clone, Debug, Default, Serialize)]
struct LiveRecord {
    /// Position in the trace file.
    index: usize,
    /// When it was due (`arrival_ms` of the trace after `--time-scale`).
    arrival_ms: f64,
    /// When it was actually sent (later than due when the client was at `--max-in-flight`).
    sent_ms: f64,
    input_length: usize,
    /// `max_tokens` asked for.
    output_length: usize,
    /// Tokens received (`usage.completion_tokens`, else the token chunks counted).
    completion_tokens: usize,
    first_token_ms: Option<f64>,
    finish_ms: Option<f64>,
    ttft_ms: Option<f64>,
    e2e_ms: Option<f64>,
    /// `usage.prompt_tokens_details.cached_tokens`; None when the answer had no usage.
    cached_tokens: Option<usize>,
    /// `x-kvroute-worker` (`id` or `id/dp_rank`), as the kv-router reports its choice.
    worker: Option<String>,
    /// `x-kvroute-pool`, as the global router reports its choice.
    pool: Option<String>,
    /// `x-kvroute-overlap-blocks`: the router's estimate of the prefix the worker held.
    router_overlap_blocks: Option<u32>,
    status: Option<u16>,
    /// Why it failed: `connect` (no answer: refused, reset before the headers), `http` (status
    /// >= 400), `stream` (broken, cut or aborted answer), `timeout` or `interrupted` (Ctrl-C).
    failure: Option<&'static str>,
    error: Option<String>,
}

impl LiveRecord {
    fn fail(&mut self, kind: &'static str, message: impl Into<String>) {
        self.failure = Some(kind);
        self.error = Some(message.into());
        self.finish_ms = None;
        self.e2e_ms = None;
    }
}

/// Run the live replay described by `args` and print its summary; `Err` also when any
/// request failed (after the summary).
pub fn run(trace_path: &Path, options: &TraceOptions, args: &LiveArgs) -> anyhow::Result<()> {
    let Some(target) = args.target.as_deref() else {
        bail!("live replay needs --target URL (the stack to send the trace to), or pass --offline to simulate");
    };
    let target = target.trim_end_matches('/');
    if !target.starts_with("http://") {
        // The workspace's reqwest is built without TLS: say so rather than fail every request.
        bail!("--target must be an http:// URL (no TLS in this build), got {target:?}");
    }
    if args.max_in_flight == 0 {
        bail!("--max-in-flight must be > 0");
    }
    if !(args.request_timeout_s.is_finite() && args.request_timeout_s > 0.0) {
        bail!("--request-timeout-s must be > 0, got {}", args.request_timeout_s);
    }
    let requests =
        Arc::new(trace::load(trace_path, options).with_context(|| format!("loading {}", trace_path.display()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let started = Instant::now();
    let (records, interrupted) = runtime.block_on(drive(target, requests.clone(), args))?;
    drop(runtime);
    eprintln!(
        "live replay of {} of {} requests against {target} in {:.1} s{}",
        records.len(),
        requests.len(),
        started.elapsed().as_secs_f64(),
        if interrupted { " (interrupted)" } else { "" }
    );
    if let Some(path) = &args.json {
        write_json(path, &records)?;
        eprintln!("wrote {}", path.display());
    }
    // Written, not println!: a closed pipe (`| head`) is an error to report, not a panic.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", Summary::of(&to_sim_records(&records)))?;
    write!(stdout, "{}", report(&records))?;
    stdout.flush()?;
    let failed: Vec<&LiveRecord> = records.iter().filter(|r| r.failure.is_some()).collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} requests failed; first: request {} ({}): {}",
            failed.len(),
            records.len(),
            first.index,
            first.failure.unwrap_or("?"),
            first.error.as_deref().unwrap_or("")
        );
    }
    if interrupted {
        bail!("interrupted");
    }
    Ok(())
}

/// Counters the progress bar reads.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    output_tokens: AtomicU64,
}

/// Counts a request in flight from its sending until this is dropped (however it ends).
struct InFlight(Arc<Counters>);

impl InFlight {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.sent.fetch_add(1, Ordering::Relaxed);
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(counters.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything one request task needs.
struct Shared {
    client: reqwest::Client,
    url: String,
    start: Instant,
    counters: Arc<Counters>,
    /// One slot per request (arrival order): set to an `interrupted` record when sent, replaced
    /// by the real one when it ends; unsent requests stay None.
    slots: Mutex<Vec<Option<LiveRecord>>>,
}

impl Shared {
    fn ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    fn store(&self, position: usize, record: LiveRecord) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())[position] = Some(record);
    }
}

/// Request bodies serialized ahead of their send time (a burst of requests due at the same
/// millisecond must not wait for each other's JSON).
const BODIES_AHEAD: usize = 64;

/// Send every request at its time; stop early on Ctrl-C. Returns the records of the requests
/// sent (arrival order) and whether the run was interrupted.
async fn drive(
    target: &str,
    requests: Arc<Vec<ReplayRequest>>,
    args: &LiveArgs,
) -> anyhow::Result<(Vec<LiveRecord>, bool)> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.request_timeout_s))
        .build()
        .context("building the HTTP client")?;
    let (bodies_tx, mut bodies) = tokio::sync::mpsc::channel(BODIES_AHEAD);
    let (producer_requests, model) = (requests.clone(), args.model.clone());
    tokio::task::spawn_blocking(move || {
        for request in producer_requests.iter() {
            if bodies_tx.blocking_send(body_for(request, &model)).is_err() {
                break; // interrupted: nobody sends the rest
            }
        }
    });
    let mut first_body = bodies.recv().await;
    let shared = Arc::new(Shared {
        client,
        url: format!("{target}/v1/completions"),
        start: Instant::now(),
        counters: Arc::new(Counters::default()),
        slots: Mutex::new(vec![None; requests.len()]),
    });
    let bar = progress_bar(requests.len() as u64);
    let ticker = tokio::spawn(tick(bar.clone(), shared.counters.clone()));
    let limit = Arc::new(Semaphore::new(args.max_in_flight));
    let send_all = async {
        let mut tasks = tokio::task::JoinSet::new();
        for (position, request) in requests.iter().enumerate() {
            let body = match first_body.take() {
                Some(b) => b,
                None => bodies.recv().await.expect("the producer makes a body for every request"),
            };
            let due = shared.start + Duration::from_secs_f64(request.arrival_ms / 1000.0);
            tokio::time::sleep_until(due.into()).await;
            let permit = limit.clone().acquire_owned().await.expect("the semaphore is never closed");
            while tasks.try_join_next().is_some() {} // reap finished tasks as we go
            let record = LiveRecord {
                index: request.index,
                arrival_ms: request.arrival_ms,
                sent_ms: shared.ms(),
                input_length: request.input_length(),
                output_length: request.output_length,
                ..LiveRecord::default()
            };
            let mut placeholder = record.clone();
            placeholder.fail("interrupted", "the run was interrupted before it finished");
            shared.store(position, placeholder);
            let in_flight = InFlight::new(&shared.counters);
            tasks.spawn(finish(shared.clone(), position, record, body, (permit, in_flight)));
        }
        while tasks.join_next().await.is_some() {}
    };
    let interrupted = tokio::select! {
        () = send_all => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    ticker.abort();
    bar.finish_and_clear();
    let slots = std::mem::take(&mut *shared.slots.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((slots.into_iter().flatten().collect(), interrupted))
}

/// One request's task: send it, count how it ended, store its record. `_guards` (the
/// `--max-in-flight` permit and the in-flight count) are released when it ends, however.
async fn finish(
    shared: Arc<Shared>,
    position: usize,
    mut record: LiveRecord,
    body: Vec<u8>,
    _guards: (tokio::sync::OwnedSemaphorePermit, InFlight),
) {
    send(&shared, &mut record, body).await;
    let counters = &shared.counters;
    match record.failure {
        None => counters.completed.fetch_add(1, Ordering::Relaxed),
        Some(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
    };
    counters.output_tokens.fetch_add(record.completion_tokens as u64, Ordering::Relaxed);
    shared.store(position, record);
}

/// The body of one request: the expanded prompt as token ids, exactly `output_length` tokens
/// out, streamed with `usage` (which the mocker, like vLLM, sends only when asked).
#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    prompt: &'a [u32],
    max_tokens: usize,
    /// vLLM's (and the mocker's) way to make the output length exact.
    ignore_eos: bool,
    min_tokens: usize,
    stream: bool,
    stream_options: Value,
}

fn body_for(request: &ReplayRequest, model: &str) -> Vec<u8> {
    let body = Body {
        model,
        prompt: &request.prompt,
        max_tokens: request.output_length,
        ignore_eos: true,
        min_tokens: request.output_length,
        stream: true,
        stream_options: json!({"include_usage": true}),
    };
    serde_json::to_vec(&body).expect("a request body serializes")
}

/// Send one request and read its streamed answer into `record`.
async fn send(shared: &Shared, record: &mut LiveRecord, body: Vec<u8>) {
    let sent = shared.client.post(&shared.url).header("content-type", "application/json").body(body).send().await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return record.fail(if e.is_timeout() { "timeout" } else { "connect" }, error_chain(&e)),
    };
    let status = response.status();
    record.status = Some(status.as_u16());
    let headers = response.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    record.worker = header("x-kvroute-worker");
    record.pool = header("x-kvroute-pool");
    record.router_overlap_blocks = header("x-kvroute-overlap-blocks").and_then(|v| v.parse().ok());
    if status.as_u16() >= 400 {
        let text = response.text().await.unwrap_or_default();
        return record.fail("http", format!("HTTP {status}: {}", truncate(&text, 300)));
    }
    let mut stream = StreamState::default();
    let mut decoder = SseDecoder::default();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return record.fail(if e.is_timeout() { "timeout" } else { "stream" }, error_chain(&e)),
        };
        for payload in decoder.push(&chunk) {
            let now = shared.ms();
            match stream.apply(&payload) {
                Ok(Step::FirstToken) => record.first_token_ms = Some(now),
                Ok(Step::Done) => record.finish_ms = Some(now),
                Ok(Step::Other) => {}
                Err(message) => return record.fail("stream", message),
            }
        }
        if record.finish_ms.is_some() {
            break;
        }
    }
    record.completion_tokens = stream.completion_tokens.unwrap_or(stream.token_chunks);
    record.cached_tokens = stream.cached_tokens;
    if let Err(message) = stream.check_complete() {
        return record.fail("stream", message);
    }
    record.ttft_ms = record.first_token_ms.map(|t| t - record.arrival_ms);
    record.e2e_ms = record.finish_ms.map(|t| t - record.arrival_ms);
}

/// An error with its sources (reqwest's own message alone is often just "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Splits a byte stream into SSE events' `data` payloads (multi-line data joined with `\n`;
/// comments and other fields ignored; CR LF tolerated).
#[derive(Default)]
struct SseDecoder {
    buffer: Vec<u8>,
    data: Option<String>,
}

impl SseDecoder {
    /// Feed bytes; returns the payloads of the events they completed.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                events.extend(self.data.take());
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
        }
        events
    }
}

/// What one SSE payload meant for the request.
#[derive(Debug, PartialEq)]
enum Step {
    /// The first chunk carrying a token.
    FirstToken,
    /// `[DONE]`.
    Done,
    Other,
}

/// What the stream said so far.
#[derive(Debug, Default)]
struct StreamState {
    token_chunks: usize,
    finish_reason: Option<String>,
    completion_tokens: Option<usize>,
    cached_tokens: Option<usize>,
    done: bool,
}

impl StreamState {
    /// Read one payload: a completion chunk (tokens and/or `usage`), an error, or `[DONE]`.
    fn apply(&mut self, payload: &str) -> Result<Step, String> {
        if payload.trim() == "[DONE]" {
            self.done = true;
            return Ok(Step::Done);
        }
        let value: Value =
            serde_json::from_str(payload).map_err(|e| format!("bad SSE chunk ({e}): {}", truncate(payload, 200)))?;
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message =
                error.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| error.to_string());
            return Err(format!("error in the stream: {message}"));
        }
        if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
            self.completion_tokens = usage["completion_tokens"].as_u64().map(|n| n as usize);
            self.cached_tokens = Some(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as usize);
        }
        let choices = value.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let Some(choice) = choices.first() else { return Ok(Step::Other) };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
        self.token_chunks += 1;
        Ok(if self.token_chunks == 1 { Step::FirstToken } else { Step::Other })
    }

    /// A stream counts as complete when it said `[DONE]` after a finish reason.
    fn check_complete(&self) -> Result<(), String> {
        match (self.done, &self.finish_reason) {
            (true, Some(_)) => Ok(()),
            (true, None) => Err(format!("[DONE] after {} tokens without a finish_reason (aborted)", self.token_chunks)),
            (false, _) => Err(format!("the stream ended after {} tokens without [DONE]", self.token_chunks)),
        }
    }
}

/// The records in the simulation's shape, so the summary is computed and printed as offline.
/// Workers are numbered by first appearance of their (pool, worker) labels; a live server
/// reports one cached figure (the mocker's: the most over re-admissions), used for both the
/// reuse and the first-admission columns; preemptions are not visible from outside.
fn to_sim_records(records: &[LiveRecord]) -> Vec<RequestRecord> {
    let mut workers: BTreeMap<(Option<&str>, Option<&str>), usize> = BTreeMap::new();
    records
        .iter()
        .map(|r| {
            let next = workers.len();
            let worker = *workers.entry((r.pool.as_deref(), r.worker.as_deref())).or_insert(next);
            let ok = r.failure.is_none();
            let cached = r.cached_tokens.unwrap_or(0);
            RequestRecord {
                index: r.index,
                arrival_ms: r.arrival_ms,
                input_length: r.input_length,
                output_length: r.completion_tokens,
                // Pools are told apart in the worker label; the simulation's pool index has no
                // live counterpart.
                pool: 0,
                worker,
                first_token_ms: r.first_token_ms.filter(|_| ok),
                finish_ms: r.finish_ms.filter(|_| ok),
                cached_tokens: cached,
                first_admission_cached_tokens: Some(cached),
                router_overlap_blocks: r.router_overlap_blocks.unwrap_or(0),
                preemptions: 0,
                rejected: r.error.clone(),
            }
        })
        .collect()
}

/// The live-only lines under the table: failures by kind, sending lag, routing spread.
fn report(records: &[LiveRecord]) -> String {
    let mut out = String::new();
    let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        if let Some(kind) = r.failure {
            *failures.entry(kind).or_default() += 1;
        }
    }
    let failed: usize = failures.values().sum();
    let kinds: Vec<String> = failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
    out.push_str(&format!(
        "failed          {failed:>10}  ({})\n",
        if kinds.is_empty() { "none".into() } else { kinds.join(", ") }
    ));
    let lags: Vec<f64> = records.iter().map(|r| r.sent_ms - r.arrival_ms).collect();
    let late = lags.iter().filter(|&&l| l > LATE_MS).count();
    let max_lag = lags.iter().copied().fold(0.0, f64::max);
    out.push_str(&format!("sent late       {late:>10}  (> {LATE_MS} ms after due; most {max_lag:.1} ms)\n"));
    let no_usage = records.iter().filter(|r| r.failure.is_none() && r.cached_tokens.is_none()).count();
    if no_usage > 0 {
        out.push_str(&format!(
            "no usage        {no_usage:>10}  (answers without usage: their cached tokens count as 0)\n"
        ));
    }
    for (name, spread) in
        [("pools", spread(records, |r| r.pool.as_deref())), ("workers", spread(records, |r| r.worker.as_deref()))]
    {
        if !spread.is_empty() {
            let parts: Vec<String> = spread.iter().map(|(l, n)| format!("{l}: {n}")).collect();
            out.push_str(&format!("{name:<16}{}\n", parts.join(", ")));
        }
    }
    out
}

/// Completed requests per label (pool or worker); requests without one are left out.
fn spread<'a>(
    records: &'a [LiveRecord],
    label: impl Fn(&'a LiveRecord) -> Option<&'a str>,
) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for l in records.iter().filter(|r| r.failure.is_none()).filter_map(label) {
        *counts.entry(l).or_default() += 1;
    }
    counts
}

fn write_json(path: &Path, records: &[LiveRecord]) -> anyhow::Result<()> {
    let mut sorted: Vec<&LiveRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.index);
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for r in sorted {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}

/// A bar of finished requests out of the total; drawn only when stderr is a terminal.
fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        // wide_msg: cut to the terminal's width rather than wrapped onto a second line.
        ProgressStyle::with_template("{elapsed:>4} [{bar:20}] {pos}/{len} finished  {wide_msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Refresh the bar from the counters; rates over the last tick.
async fn tick(bar: ProgressBar, counters: Arc<Counters>) {
    let period = Duration::from_millis(500);
    let (mut last_done, mut last_tokens) = (0, 0);
    let mut interval = tokio::time::interval(period);
    loop {
        interval.tick().await;
        let completed = counters.completed.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let tokens = counters.output_tokens.load(Ordering::Relaxed);
        let per_s = |now: u64, before: u64| (now - before) as f64 / period.as_secs_f64();
        bar.set_message(format!(
            "sent {}, ok {completed}, failed {failed}, in flight {}, {:.1} req/s, {:.0} tok/s",
            counters.sent.load(Ordering::Relaxed),
            counters.in_flight.load(Ordering::Relaxed),
            per_s(completed + failed, last_done),
            per_s(tokens, last_tokens),
        ));
        bar.set_position(completed + failed);
        (last_done, last_tokens) = (completed + failed, tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_asks_for_exact_length_streaming_with_usage() {
        let request = ReplayRequest { index: 0, arrival_ms: 0.0, prompt: vec![7, 7, 9], output_length: 5 };
        let body: Value = serde_json::from_slice(&body_for(&request, "m")).unwrap();
        assert_eq!(
            body,
            json!({"model": "m", "prompt": [7, 7, 9], "max_tokens": 5, "ignore_eos": true, "min_tokens": 5,
                   "stream": true, "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn sse_events_are_split_across_chunk_boundaries() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: {\"a\"").is_empty());
        assert_eq!(d.push(b":1}\r\n\r\ndata: [DONE]\n"), vec!["{\"a\":1}"]);
        assert_eq!(d.push(b"\n: comment\n\n"), vec!["[DONE]"]);
    }

    #[test]
    fn a_full_stream_gives_the_first_token_usage_and_done() {
        let mut s = StreamState::default();
        let token = |finish: &str| format!(r#"{{"choices":[{{"index":0,"text":"x","finish_reason":{finish}}}]}}"#);
        assert_eq!(s.apply(&token("null")), Ok(Step::FirstToken));
        assert_eq!(s.apply(&token("\"length\"")), Ok(Step::Other));
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        assert_eq!(s.apply(usage), Ok(Step::Other));
        assert_eq!(s.apply("[DONE]"), Ok(Step::Done));
        assert_eq!((s.completion_tokens, s.cached_tokens), (Some(2), Some(8)));
        assert!(s.check_complete().is_ok());
    }

    #[test]
    fn an_aborted_or_cut_stream_is_a_failure() {
        let mut aborted = StreamState::default();
        aborted.apply(r#"{"choices":[{"text":"x","finish_reason":null}]}"#).unwrap();
        aborted.apply("[DONE]").unwrap();
        assert!(aborted.check_complete().unwrap_err().contains("without a finish_reason"));
        let cut = StreamState::default();
        assert!(cut.check_complete().unwrap_err().contains("without [DONE]"));
        assert!(StreamState::default().apply(r#"{"error":{"message":"boom"}}"#).unwrap_err().contains("boom"));
        assert!(StreamState::default().apply("not json").is_err());
    }

    #[test]
    fn failed_requests_count_as_rejected_in_the_summary() {
        let ok = LiveRecord {
            index: 0,
            input_length: 100,
            completion_tokens: 4,
            first_token_ms: Some(5.0),
            finish_ms: Some(9.0),
            cached_tokens: Some(50),
            worker: Some("1".into()),
            ..LiveRecord::default()
        };
        let mut bad = LiveRecord { index: 1, input_length: 100, ..LiveRecord::default() };
        bad.fail("connect", "refused");
        let summary = Summary::of(&to_sim_records(&[ok, bad]));
        assert_eq!((summary.requests, summary.completed, summary.rejected), (2, 1, 1));
        assert_eq!(summary.prefix_reuse_ratio, 0.5);
        assert_eq!(summary.ttft_ms.p50, 5.0);
    }
}
