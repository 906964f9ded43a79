//! `kvroute replay --target URL` (live mode) against real mocker and kv-router processes: the
//! trace is sent at its times, every request is recorded, failures are counted, never fatal
//! until the summary is out.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;

/// A fresh temp directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvroute-replay-live-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `conversations` conversations of `turns` turns, one request every 100 ms of trace time,
/// turns interleaved; turn t of a conversation repeats its t earlier 512-token blocks and adds
/// one. Returns the path.
fn write_trace(dir: &Path, conversations: u64, turns: u64) -> PathBuf {
    let mut lines = Vec::new();
    for turn in 0..turns {
        for conv in 0..conversations {
            let ids: Vec<u64> = (0..=turn).map(|t| conv * 100 + t).collect();
            let timestamp = (turn * conversations + conv) * 100;
            let input_length = 512 * (turn + 1) - 7;
            lines.push(format!(r#"{{"timestamp": {timestamp}, "input_length": {input_length}, "output_length": 8, "hash_ids": {ids:?}}}"#));
        }
    }
    let path = dir.join("trace.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Run `kvroute <args>` to completion, killed (and the test failed) after `timeout`.
fn run_bounded(args: &[&str], timeout: Duration) -> Output {
    let mut child =
        support::kvroute(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kvroute starts");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvroute {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// The first number after `label` on the summary line starting with it.
fn summary_number(stdout: &str, label: &str) -> f64 {
    let line =
        stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} line in\n{stdout}"));
    line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_live_replay_through_a_kv_router_completes_every_request_and_reuses_prefixes() {
    let dir = temp_dir("router");
    // 4 conversations x 5 turns over 2 s of trace time, replayed in about 1 s.
    let trace = write_trace(&dir, 4, 5);
    let mockers: Vec<support::Process> =
        (0..2).map(|_| support::mocker(&["--block-size", "16", "--speedup-ratio", "100"])).collect();
    let router = support::kv_router(&mockers.iter().collect::<Vec<_>>(), &["--block-size", "16", "--seed", "7"]);
    let json = dir.join("records.jsonl");
    let out = run_bounded(
        &[
            "replay",
            "--trace",
            trace.to_str().unwrap(),
            "--target",
            &router.router_http(),
            "--time-scale",
            "2",
            "--max-requests",
            "20",
            "--request-timeout-s",
            "20",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    // The offline table, with the live lines under it.
    assert!(stdout.contains("completed 20, rejected 0"), "{stdout}");
    for line in ["TTFT ms", "latency ms", "throughput", "prefix reuse", "failed"] {
        assert!(stdout.lines().any(|l| l.starts_with(line)), "no {line:?} line in\n{stdout}");
    }
    assert!(summary_number(&stdout, "prefix reuse") > 0.0, "{stdout}");

    let records: Vec<Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 20);
    let mut later_turns_cached = 0;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i, "records are in trace order");
        assert!(r["failure"].is_null(), "{r}");
        assert_eq!(r["completion_tokens"], 8, "exactly max_tokens out: {r}");
        let (ttft, e2e) = (r["ttft_ms"].as_f64().unwrap(), r["e2e_ms"].as_f64().unwrap());
        assert!(0.0 < ttft && ttft <= e2e, "{r}");
        assert!(r["worker"].is_string(), "the kv-router names its worker: {r}");
        let cached = r["cached_tokens"].as_u64().unwrap();
        assert!(cached <= r["input_length"].as_u64().unwrap(), "{r}");
        if i < 4 {
            assert_eq!(cached, 0, "a conversation's first turn shares nothing: {r}");
        } else {
            later_turns_cached += cached;
        }
    }
    assert!(later_turns_cached > 0, "later turns reuse their conversation's prefix: {records:?}");
}

#[test]
fn an_unreachable_target_counts_every_request_as_failed_and_exits_non_zero() {
    let dir = temp_dir("dead");
    let trace = write_trace(&dir, 3, 1);
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = format!("http://127.0.0.1:{port}");
    let out = run_bounded(
        &["replay", "--trace", trace.to_str().unwrap(), "--target", &target, "--time-scale", "10"],
        Duration::from_secs(30),
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    // The summary is still printed, the failures counted by kind, and the error says why.
    assert!(stdout.contains("completed 0, rejected 3"), "{stdout}");
    assert!(stdout.contains("connect 3"), "{stdout}");
    assert!(stderr.contains("3 of 3 requests failed"), "{stderr}");
}

#[test]
fn an_error_status_is_recorded_as_a_failed_request() {
    let dir = temp_dir("status");
    let trace = write_trace(&dir, 2, 1);
    let mocker = support::mocker(&["--block-size", "16", "--speedup-ratio", "100"]);
    // The mocker answers 404 for a model it does not serve.
    let out = run_bounded(
        &["replay", "--trace", trace.to_str().unwrap(), "--target", &mocker.http(), "--model", "no-such-model"],
        Duration::from_secs(30),
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("http 2"), "{stdout}");
    assert!(stderr.contains("404"), "{stderr}");
}

#[test]
fn live_mode_needs_a_target() {
    let dir = temp_dir("no-target");
    let trace = write_trace(&dir, 1, 1);
    let out = run_bounded(&["replay", "--trace", trace.to_str().unwrap()], Duration::from_secs(10));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--target") && stderr.contains("--offline"), "{stderr}");
}
