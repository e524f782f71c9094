//! `hack/control-plane.sh`, as a person with a laptop uses it: `up` prints a KUBECONFIG for a
//! real v1.37 cluster, and `down` leaves no process or file behind.

use std::path::Path;
use std::process::Command;

#[test]
fn up_gives_a_real_v1_37_cluster_and_down_leaves_nothing_behind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let state = std::env::temp_dir().join(format!("eagle-eye-script-test-{}", std::process::id()));
    let script = |arg: &str| {
        let out = Command::new("bash")
            .arg(root.join("hack/control-plane.sh"))
            .arg(arg)
            .env("EAGLE_EYE_PLANE_DIR", &state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let up = script("up");
    let last = up.lines().last().unwrap();
    let kubeconfig = last
        .strip_prefix("export KUBECONFIG=")
        .expect("last line exports KUBECONFIG");
    let pids = std::fs::read_to_string(state.join("pids")).unwrap();
    let bins = std::fs::read_to_string(state.join("bin_dir")).unwrap();
    let version = Command::new(Path::new(bins.trim()).join("kubectl"))
        .args(["version", "-o", "json"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    println!(
        "client {} / server {}",
        version["clientVersion"]["gitVersion"], version["serverVersion"]["gitVersion"]
    );
    for side in ["clientVersion", "serverVersion"] {
        let v = version[side]["gitVersion"].as_str().unwrap();
        assert!(v.starts_with("v1.37."), "{side} is {v}");
    }

    script("down");
    for pid in pids.lines() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let state: Vec<&str> = state
            .lines()
            .filter(|l| l.starts_with("Name:") || l.starts_with("State:"))
            .collect();
        assert!(!running(pid), "process {pid} survived `down`: {state:?}");
    }
    assert!(!state.exists(), "`down` removes its files");
}

/// Alive, not merely an exited process that an init which does not reap orphans still lists.
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains("zombie"))
        })
        .unwrap_or(false)
}
