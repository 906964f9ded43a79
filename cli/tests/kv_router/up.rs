//! `kvroute up` refuses a bad stack file with a message naming the field.

use std::process::Command;

#[test]
fn a_bad_stack_file_is_rejected_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("kvroute-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, needle) in [
        ("pools:\n  - {name: a, workers: 0}\n", "pools[0].workers must be > 0"),
        ("pools:\n  - {name: a, workers: 1, mocker: {num_gpu_blockz: 5}}\n", "num_gpu_blockz"),
        ("pools: []\n", "at least one pool"),
    ] {
        let file = dir.join("stack.yaml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kvroute")).arg("up").arg(&file).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}
