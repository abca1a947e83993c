//! `percore demo` end to end (shortened): it serves, loads, prints the spectrum and writes the
//! four report files, which parse back.

mod support;
use std::process::Command;

use support::percore_bin;

#[test]
fn demo_writes_a_spectrum_and_four_reports() {
    let dir = std::env::temp_dir().join(format!("percore-demo-test-{}", std::process::id()));
    let out = Command::new(percore_bin())
        .args([
            "demo",
            "--probe",
            "1s",
            "--duration",
            "2s",
            "-c",
            "16",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Detailed Percentile spectrum"), "{stdout}");
    assert!(stdout.contains("Errors: 0"), "{stdout}");
    let hgrm = std::fs::read_to_string(dir.join("latency.hgrm")).unwrap();
    assert!(hgrm.contains("#[Mean"), "{hgrm}");
    let hlog = std::fs::read_to_string(dir.join("latency.hlog")).unwrap();
    assert!(hlog.contains("#[StartTime:"), "{hlog}");
    let json = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(
        json.contains("\"latency_ms\"") && json.contains("\"target_rps\""),
        "{json}"
    );
    let svg = std::fs::read_to_string(dir.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    std::fs::remove_dir_all(&dir).ok();
}
