//! Latency-by-percentile SVG plots in the style of HdrHistogram's plotter:
//! x is `1/(1-p)` on a log scale labelled 0%, 90%, 99%, 99.9%, ...; y is
//! latency in ms on a log scale; one line per run, with a legend.

use std::path::Path;

use plotters::prelude::*;

use crate::dist::Distribution;
use crate::error::Error;

/// Default image size in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (1000, 600);

/// Largest x (1/(1-p)) drawn: 99.99999%.
const MAX_X: f64 = 1e7;

/// Line colours, cycled.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Axis label for x = 1/(1-p): "0%", "90%", "99%", "99.9%", ... at powers of
/// ten, empty elsewhere (minor grid lines stay unlabelled).
pub fn percentile_label(x: f64) -> String {
    if x <= 0.0 {
        return String::new();
    }
    let k = x.log10();
    let kr = k.round();
    if (k - kr).abs() > 1e-9 || kr < 0.0 {
        return String::new();
    }
    match kr as u32 {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        k => format!(
            "99{}{}%",
            if k > 2 { "." } else { "" },
            "9".repeat(k as usize - 2)
        ),
    }
}

/// Axis label for a latency in ms: up to 3 decimals, trailing zeros dropped.
fn ms_label(ms: f64) -> String {
    let s = format!("{ms:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// x coordinate of percentile `p` (fraction); `p == 1` maps to `x_max`.
fn x_of(p: f64, x_max: f64) -> f64 {
    if p >= 1.0 {
        x_max
    } else {
        (1.0 / (1.0 - p)).clamp(1.0, x_max)
    }
}

/// Render the plot into an SVG string.
pub fn plot_svg_string(
    runs: &[(String, Distribution)],
    title: &str,
    size: (u32, u32),
) -> Result<String, Error> {
    let op = "plot latency by percentile";
    if runs.is_empty() {
        return Err(Error::invalid(op, "nothing to plot"));
    }
    let series: Vec<(&str, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(l, d)| {
            let pts = d
                .rows()
                .iter()
                .map(|r| (r.percentile, r.value_ms))
                .collect::<Vec<_>>();
            (l.as_str(), pts)
        })
        .collect();
    // x range: up to the next power of ten above the deepest finite percentile.
    let deepest = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|(p, _)| *p < 1.0)
        .map(|(p, _)| 1.0 / (1.0 - p))
        .fold(1.0_f64, f64::max);
    let x_max = 10f64
        .powf((deepest * 1.000_001).log10().ceil())
        .clamp(100.0, MAX_X);
    let positive = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|&(_, v)| v))
            .filter(|v| *v > 0.0 && v.is_finite())
    };
    let y_lo = positive().fold(f64::INFINITY, f64::min);
    let y_hi = positive().fold(0.0_f64, f64::max);
    let (y_lo, y_hi) = if y_lo.is_finite() && y_hi > 0.0 {
        (y_lo / 1.5, y_hi * 1.5)
    } else {
        (0.001, 1.0)
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| Error::plot(op, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .margin_right(40)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d((1.0..x_max).log_scale(), (y_lo..y_hi).log_scale())
            .map_err(|e| Error::plot(op, e))?;
        chart
            .configure_mesh()
            .x_desc("Percentile")
            .y_desc("Latency (ms)")
            .x_labels(12)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| ms_label(*y))
            .draw()
            .map_err(|e| Error::plot(op, e))?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let line = pts
                .iter()
                .map(|&(p, v)| (x_of(p, x_max), v.clamp(y_lo, y_hi)))
                .collect::<Vec<_>>();
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(|e| Error::plot(op, e))?
                .label(*label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| Error::plot(op, e))?;
        root.present().map_err(|e| Error::plot(op, e))?;
    }
    Ok(svg)
}

/// Render the plot and write it to `out_svg`.
pub fn plot(runs: &[(String, Distribution)], title: &str, out_svg: &Path) -> Result<(), Error> {
    let svg = plot_svg_string(runs, title, DEFAULT_SIZE)?;
    std::fs::write(out_svg, svg)
        .map_err(|e| Error::io(format!("write plot {}", out_svg.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    fn run(label: &str, scale: u64) -> (String, Distribution) {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=20_000u64 {
            h.record(v * scale).unwrap();
        }
        (label.to_string(), Distribution::Histogram(h))
    }

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
        assert_eq!(percentile_label(20.0), "");
        assert_eq!(percentile_label(0.0), "");
        assert_eq!(ms_label(100.0), "100");
        assert_eq!(ms_label(0.25), "0.25");
        assert_eq!(ms_label(0.0001), "0");
    }

    #[test]
    fn svg_is_well_formed_with_one_line_per_run() {
        let runs = vec![run("baseline", 1), run("candidate <b> & c", 3)];
        let svg = plot_svg_string(&runs, "p99 & friends", DEFAULT_SIZE).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for c in &COLORS[..2] {
            let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            // one data polyline + one legend sample per run
            let n = svg.matches(&stroke).count();
            assert!(n >= 2, "{stroke}: {n}");
        }
        assert!(svg.matches("<polyline").count() >= 2);
        for label in [
            "0%",
            "90%",
            "99%",
            "99.9%",
            "99.99%",
            "baseline",
            "Latency (ms)",
        ] {
            // plotters' SVG backend writes each text on its own line
            assert!(svg.contains(&format!("\n{label}\n</text>")), "{label}");
        }
        assert!(svg.contains("&amp;") && !svg.contains("<b>"));
    }

    #[test]
    fn degenerate_inputs() {
        assert!(plot_svg_string(&[], "t", DEFAULT_SIZE).is_err());
        let empty = Histogram::<u64>::new(3).unwrap();
        let svg = plot_svg_string(
            &[("e".into(), Distribution::Histogram(empty))],
            "t",
            DEFAULT_SIZE,
        )
        .unwrap();
        assert!(svg.trim_end().ends_with("</svg>"));
        let p = std::env::temp_dir().join(format!("plot-{}.svg", std::process::id()));
        plot(&[run("a", 1)], "t", &p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("<svg"));
        std::fs::remove_file(&p).unwrap();
        assert!(plot(&[run("a", 1)], "t", Path::new("/nonexistent-dir/x.svg")).is_err());
    }
}
