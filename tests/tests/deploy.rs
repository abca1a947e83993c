//! The deployment files: `tune.sh` changes nothing without `--apply` (its own test builds a fake
//! sysfs/procfs tree and compares checksums), and `deploy/check.sh --quick` validates the unit,
//! the manifests, the sysctl file and the scripts with whatever validators are installed.

use std::{path::PathBuf, process::Command};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn run(script: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(deploy_dir().join(script))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn tune_sh_changes_nothing_without_apply() {
    let (ok, text) = run("tune_test.sh", &[]);
    assert!(ok, "{text}");
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.contains(" passed, 0 failed"), "{text}");
}

#[test]
fn deploy_files_validate() {
    let (ok, text) = run("check.sh", &["--quick"]);
    assert!(ok, "{text}");
}
