//! Runs the offline `report` subcommands (`merge`, `diff`, `plot`) given the
//! parsed [`ReportCommand`], writing human output to a caller-supplied sink.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::ReportCommand;
use crate::diff::format_diff;
use crate::dist::{load_distribution, Distribution};
use crate::error::Error;
use crate::hgrm::{format_hgrm, write_hgrm_file};
use crate::hlog::merge_hlog_files;
use crate::plot::plot;

fn label_of(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Execute a `report` subcommand; `out` receives what goes to stdout.
pub fn run_report(cmd: &ReportCommand, out: &mut dyn Write) -> Result<(), Error> {
    let w = |out: &mut dyn Write, s: &str| {
        out.write_all(s.as_bytes())
            .map_err(|e| Error::io("write report output", e))
    };
    match cmd {
        ReportCommand::Merge { files, hgrm } => {
            let merged = merge_hlog_files(files)?;
            match hgrm {
                Some(path) => {
                    write_hgrm_file(path, &merged)?;
                    w(
                        out,
                        &format!(
                            "merged {} file(s), {} values -> {}\n",
                            files.len(),
                            merged.len(),
                            path.display()
                        ),
                    )
                }
                None => w(out, &format_hgrm(&merged)),
            }
        }
        ReportCommand::Diff { a, b } => {
            let (da, db) = (load_distribution(a)?, load_distribution(b)?);
            w(
                out,
                &format_diff(&a.display().to_string(), &b.display().to_string(), &da, &db),
            )
        }
        ReportCommand::Plot { files, svg, title } => {
            let runs = files
                .iter()
                .map(|f| Ok((label_of(f), load_distribution(f)?)))
                .collect::<Result<Vec<(String, Distribution)>, Error>>()?;
            let title = title
                .clone()
                .unwrap_or_else(|| "Latency by Percentile Distribution".into());
            plot(&runs, &title, svg)?;
            w(out, &format!("wrote {}\n", svg.display()))
        }
    }
}

/// Convenience for tests and the binary: the files a command reads.
pub fn input_files(cmd: &ReportCommand) -> Vec<PathBuf> {
    match cmd {
        ReportCommand::Merge { files, .. } | ReportCommand::Plot { files, .. } => files.clone(),
        ReportCommand::Diff { a, b } => vec![a.clone(), b.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse_from, Command};
    use crate::hlog::{write_hlog_file, Interval};
    use hdrhistogram::Histogram;
    use std::time::{Duration, SystemTime};

    fn cmd(args: &[&str]) -> ReportCommand {
        let cli = parse_from(["percore-bench", "report"].iter().chain(args)).unwrap();
        match cli.command {
            Some(Command::Report(r)) => r,
            None => panic!("no subcommand"),
        }
    }

    #[test]
    fn end_to_end_merge_diff_plot() {
        let dir = std::env::temp_dir().join(format!("report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mk = |scale: u64| {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            for v in 1..=1000u64 {
                h.record(v * scale).unwrap();
            }
            Interval {
                tag: None,
                start: Duration::ZERO,
                length: Duration::from_secs(1),
                histogram: h,
            }
        };
        let a = dir.join("a.hlog");
        let b = dir.join("b.hlog");
        write_hlog_file(&a, SystemTime::now(), &[mk(1), mk(1)]).unwrap();
        write_hlog_file(&b, SystemTime::now(), &[mk(2)]).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();

        let mut out = Vec::new();
        let m = cmd(&["merge", &s(&a), &s(&b)]);
        assert_eq!(input_files(&m).len(), 2);
        run_report(&m, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Total count    =         3000"), "{text}");

        let merged = dir.join("m.hgrm");
        let mut out = Vec::new();
        run_report(&cmd(&["merge", &s(&a), "--hgrm", &s(&merged)]), &mut out).unwrap();
        assert!(std::fs::read_to_string(&merged)
            .unwrap()
            .starts_with("       Value"));

        let mut out = Vec::new();
        run_report(&cmd(&["diff", &s(&a), &s(&b)]), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("       50%        0.500        1.000    2.000"),
            "{text}"
        );

        let mut out = Vec::new();
        run_report(&cmd(&["diff", &s(&merged), &s(&b)]), &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("B/A"));

        let svg = dir.join("p.svg");
        let mut out = Vec::new();
        run_report(
            &cmd(&[
                "plot",
                &s(&a),
                &s(&merged),
                "--svg",
                &s(&svg),
                "--title",
                "T",
            ]),
            &mut out,
        )
        .unwrap();
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        assert!(svg_text.starts_with("<svg") && svg_text.contains("\nm\n</text>"));

        let e = run_report(
            &cmd(&["diff", &s(&a), &s(&dir.join("nope.hgrm"))]),
            &mut Vec::new(),
        );
        assert!(e.unwrap_err().to_string().contains("nope.hgrm"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
