//! The Mooncake trace format and its expansion into token-level requests, as Dynamo's replay
//! does it.
//!
//! One JSON object per line: `timestamp` (ms), `input_length`, `output_length` (tokens) and
//! `hash_ids` (one id per 512-token block; equal ids are equal blocks). Expansion interns each
//! id to a dense `u32` by first appearance over the whole file (the identity for the Mooncake
//! conversation trace), repeats it 512 times, and cuts the last block to `input_length`, so
//! equal ids give equal tokens and hence equal KV block hashes at any block size dividing 512.
//! Owns parsing and expansion; not the simulation.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// Tokens per trace hash id in the Mooncake trace (Dynamo's `trace_block_size`).
pub const TRACE_BLOCK_SIZE: usize = 512;

/// One line of the trace, as written.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TraceRecord {
    /// Arrival in milliseconds from the start of the trace.
    pub timestamp: u64,
    pub input_length: usize,
    pub output_length: usize,
    pub hash_ids: Vec<u64>,
}

/// Why a trace could not be loaded; names the (1-based) line.
#[derive(Debug, Error)]
pub enum TraceError {
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
    #[error("trace line {line}: {source}")]
    Json { line: usize, source: serde_json::Error },
    #[error("trace line {line}: {problem}")]
    Invalid { line: usize, problem: String },
    #[error("the trace has no requests")]
    Empty,
}

/// A trace request expanded to tokens, ready to replay.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayRequest {
    /// Position in the trace file (0-based); also the request's id in the simulation.
    pub index: usize,
    /// Arrival in (virtual) milliseconds from the first request, after the time scale.
    pub arrival_ms: f64,
    pub prompt: Vec<u32>,
    pub output_length: usize,
}

impl ReplayRequest {
    pub fn input_length(&self) -> usize {
        self.prompt.len()
    }
}

/// How to turn trace lines into requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceOptions {
    /// Keep only the first this many lines (file order).
    pub max_requests: Option<usize>,
    /// Arrival speed-up: arrivals are `(timestamp - first) / time_scale`. Must be > 0.
    pub time_scale: f64,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions { max_requests: None, time_scale: 1.0 }
    }
}

/// Parse trace lines (blank lines are skipped). Errors name the line.
pub fn parse_records(reader: impl BufRead, max_requests: Option<usize>) -> Result<Vec<TraceRecord>, TraceError> {
    let mut records: Vec<(usize, TraceRecord)> = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        if max_requests.is_some_and(|m| records.len() >= m) {
            break;
        }
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record: TraceRecord =
            serde_json::from_str(&line).map_err(|source| TraceError::Json { line: i + 1, source })?;
        records.push((i + 1, record));
    }
    validate(&records)?;
    Ok(records.into_iter().map(|(_, r)| r).collect())
}

fn validate(records: &[(usize, TraceRecord)]) -> Result<(), TraceError> {
    for (line, r) in records {
        let invalid = |problem: String| TraceError::Invalid { line: *line, problem };
        if r.input_length == 0 {
            return Err(invalid("input_length must be > 0".into()));
        }
        if r.hash_ids.is_empty() {
            return Err(invalid("hash_ids is empty".into()));
        }
        let covered = r.hash_ids.len() * TRACE_BLOCK_SIZE;
        if r.input_length > covered {
            return Err(invalid(format!(
                "input_length {} exceeds {} hash ids x {TRACE_BLOCK_SIZE} tokens = {covered}",
                r.input_length,
                r.hash_ids.len()
            )));
        }
    }
    Ok(())
}

/// Read a trace file (see [`parse_records`]).
pub fn load_records(path: &Path, max_requests: Option<usize>) -> Result<Vec<TraceRecord>, TraceError> {
    let file = std::fs::File::open(path)?;
    parse_records(std::io::BufReader::new(file), max_requests)
}

/// Expand records into requests sorted by arrival (stable: file order among equal timestamps).
pub fn expand(records: &[TraceRecord], options: &TraceOptions) -> Result<Vec<ReplayRequest>, TraceError> {
    if !(options.time_scale.is_finite() && options.time_scale > 0.0) {
        return Err(TraceError::Invalid {
            line: 0,
            problem: format!("time_scale must be > 0, got {}", options.time_scale),
        });
    }
    let records = match options.max_requests {
        Some(m) => &records[..m.min(records.len())],
        None => records,
    };
    let first = records.iter().map(|r| r.timestamp).min().ok_or(TraceError::Empty)?;
    let mut interned: HashMap<u64, u32> = HashMap::new();
    let mut requests: Vec<ReplayRequest> = records
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let mut prompt = Vec::with_capacity(r.hash_ids.len() * TRACE_BLOCK_SIZE);
            for id in &r.hash_ids {
                let next = interned.len() as u32;
                let token = *interned.entry(*id).or_insert(next);
                prompt.extend(std::iter::repeat_n(token, TRACE_BLOCK_SIZE));
            }
            prompt.truncate(r.input_length);
            ReplayRequest {
                index,
                arrival_ms: (r.timestamp - first) as f64 / options.time_scale,
                prompt,
                output_length: r.output_length,
            }
        })
        .collect();
    requests.sort_by(|a, b| a.arrival_ms.total_cmp(&b.arrival_ms));
    Ok(requests)
}

/// Load and expand a trace file in one call.
pub fn load(path: &Path, options: &TraceOptions) -> Result<Vec<ReplayRequest>, TraceError> {
    let records = load_records(path, options.max_requests)?;
    expand(&records, options)
}
