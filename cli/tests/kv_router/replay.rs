//! `kvroute replay --offline` runs a trace and prints its summary; same seed, same bytes.

use std::process::Command;

#[test]
fn an_offline_replay_is_deterministic_and_reports_reuse() {
    let dir = std::env::temp_dir().join(format!("kvroute-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.jsonl");
    // Two conversations of three turns each: every turn repeats its conversation's prefix.
    let mut lines = Vec::new();
    for turn in 0..3u64 {
        for conv in 0..2u64 {
            let ids: Vec<u64> = (0..=turn).map(|t| conv * 100 + t).collect();
            lines.push(format!(
                r#"{{"timestamp": {}, "input_length": {}, "output_length": 8, "hash_ids": {ids:?}}}"#,
                turn * 2000 + conv * 10,
                512 * (turn + 1)
            ));
        }
    }
    std::fs::write(&trace, lines.join("\n")).unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_kvroute"))
            .args(["replay", "--offline", "--workers", "2", "--seed", "5", "--trace", trace.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert_eq!(first, run(), "same seed, same output");
    assert!(first.contains("completed 6"), "{first}");
    let reuse: f64 = first
        .lines()
        .find(|l| l.starts_with("prefix reuse"))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    // Turns 2 and 3 reuse their conversation's earlier blocks (the KV router keeps each
    // conversation on the worker that holds it): (512 + 1024) * 2 of (512 + 1024 + 1536) * 2.
    assert!((reuse - 0.5).abs() < 0.01, "{first}");
    let out_dir = dir.join("compare");
    let compare = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args([
            "replay",
            "--offline",
            "--compare",
            "--workers",
            "2",
            "--trace",
            trace.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(compare.status.success(), "{}", String::from_utf8_lossy(&compare.stderr));
    let table = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    for setting in ["random", "round-robin", "least-loaded", "Dynamo classic", "Dynamo tuned"] {
        assert!(table.contains(setting), "{setting} missing from\n{table}");
    }
    assert_eq!(table, String::from_utf8(compare.stdout).unwrap());
    let live = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["replay", "--trace", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!live.status.success());
    assert!(String::from_utf8_lossy(&live.stderr).contains("--offline"));
}
