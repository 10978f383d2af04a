//! Latency summaries and outputs for `rapax bench` and `rapax failover`.
//!
//! Latencies are recorded in nanoseconds into an HdrHistogram ([`LatencyRecorder`]) and reported
//! as percentiles in microseconds ([`Summary4`], [`Summary3`], [`Summary2`]), never as means.
//! A benchmark's report ([`BenchReport`]) carries the fabric's floor measured in the same run, so
//! the figure that counts — replication latency over the floor — is printed next to the raw
//! numbers. Reports are written as JSON for machines and as text for people, and latency
//! distributions can be drawn as a self-contained SVG percentile plot ([`percentile_plot_svg`]).

use std::fmt::Write as _;
use std::io::{self, IsTerminal as _};
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest latency the recorder distinguishes, in nanoseconds.
pub const LOWEST_NS: u64 = 1;
/// Highest latency the recorder tracks, in nanoseconds (60 s); longer samples saturate to it.
pub const HIGHEST_NS: u64 = 60_000_000_000;
/// Significant decimal figures the recorder keeps.
pub const SIGNIFICANT_FIGURES: u8 = 3;

/// Nanoseconds per microsecond, as a float for conversions.
const NS_PER_US: f64 = 1_000.0;
/// Relative amount taken off a quantile before the histogram rounds its rank up.
const QUANTILE_ROUNDING_SLACK: f64 = 1e-12;

// ------------------------------------------------------------------------------------------------
// Recorder and summaries

/// A latency histogram recording nanoseconds from 1 ns to 60 s with 3 significant figures.
///
/// Recording never fails: samples outside the range are clamped into it.
#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)
            .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    /// Records one sample of `latency_ns` nanoseconds, clamped into the tracked range.
    pub fn record_ns(&mut self, latency_ns: u64) {
        self.histogram.saturating_record(latency_ns);
    }

    /// Records `count` samples of `latency_ns` at once, clamped into the tracked range.
    pub fn record_ns_count(&mut self, latency_ns: u64, count: u64) {
        self.histogram.saturating_record_n(latency_ns, count);
    }

    /// Records one sample given as a [`Duration`], clamped into the tracked range.
    pub fn record_duration(&mut self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every sample of `other` to this recorder.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Both histograms have the same bounds and every sample was clamped into them, so the
        // addition cannot run out of range.
        self.histogram
            .add(&other.histogram)
            .expect("recorders with equal bounds always merge");
    }

    /// Number of samples recorded.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// Whether no sample has been recorded.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The latency at percentile `q` (0 to 100, clamped; NaN reads as 0) in microseconds.
    ///
    /// An empty recorder reports 0.
    pub fn percentile_us(&self, q: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 100.0) };
        // The histogram takes the ceiling of `quantile * count`; shave a hair off the quantile
        // so rounding error (0.999 * 1000 = 999.000...01) does not step to the next sample.
        let quantile = q / 100.0 * (1.0 - QUANTILE_ROUNDING_SLACK);
        self.histogram.value_at_quantile(quantile) as f64 / NS_PER_US
    }

    /// The largest latency recorded, in microseconds (0 when empty).
    pub fn max_us(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.histogram.max() as f64 / NS_PER_US
    }

    /// p50, p99, p99.9 and max in microseconds.
    pub fn summary(&self) -> Summary4 {
        Summary4 {
            p50: self.percentile_us(50.0),
            p99: self.percentile_us(99.0),
            p999: self.percentile_us(99.9),
            max: self.max_us(),
        }
    }

    /// p50, p99 and max in microseconds.
    pub fn summary3(&self) -> Summary3 {
        Summary3 {
            p50: self.percentile_us(50.0),
            p99: self.percentile_us(99.0),
            max: self.max_us(),
        }
    }

    /// p50 and p99 in microseconds.
    pub fn summary2(&self) -> Summary2 {
        Summary2 {
            p50: self.percentile_us(50.0),
            p99: self.percentile_us(99.0),
        }
    }
}

/// Latency percentiles p50, p99, p99.9 and max, in microseconds.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Summary4 {
    /// Median, in microseconds.
    pub p50: f64,
    /// 99th percentile, in microseconds.
    pub p99: f64,
    /// 99.9th percentile, in microseconds.
    pub p999: f64,
    /// Largest sample, in microseconds.
    pub max: f64,
}

/// Latency percentiles p50, p99 and max, in microseconds.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Summary3 {
    /// Median, in microseconds.
    pub p50: f64,
    /// 99th percentile, in microseconds.
    pub p99: f64,
    /// Largest sample, in microseconds.
    pub max: f64,
}

/// Latency percentiles p50 and p99, in microseconds.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Summary2 {
    /// Median, in microseconds.
    pub p50: f64,
    /// 99th percentile, in microseconds.
    pub p99: f64,
}

// ------------------------------------------------------------------------------------------------
// Reports

/// The result of one `rapax bench` run, with the fabric's floor measured in the same run.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// Fabric the replicas talked over (`shm`, `udp`, `rdma`, `dpdk`).
    pub fabric: String,
    /// Number of replicas in the cluster.
    pub replicas: usize,
    /// Operations completed.
    pub ops: u64,
    /// Size of each written value, in bytes.
    pub value_bytes: usize,
    /// Number of concurrent clients.
    pub clients: usize,
    /// Client-observed latency from request to reply, in microseconds.
    pub e2e_us: Summary4,
    /// Leader-observed latency from appending an entry to its commit, in microseconds.
    pub replication_us: Summary4,
    /// Round trip of one one-sided write of the same size on the same fabric, in microseconds.
    pub floor_us: Summary2,
    /// Completed operations per second.
    pub ops_per_s: f64,
}

impl BenchReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a bench report always serializes")
    }

    /// Writes the report as JSON (with a trailing newline) to `path`.
    pub fn write_json(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }

    /// End-to-end p50 over floor p50 (infinite or NaN when the floor is 0).
    pub fn e2e_over_floor(&self) -> f64 {
        self.e2e_us.p50 / self.floor_us.p50
    }

    /// Replication p50 over floor p50 (infinite or NaN when the floor is 0).
    pub fn replication_over_floor(&self) -> f64 {
        self.replication_us.p50 / self.floor_us.p50
    }

    /// A multi-line text summary for people, ending with a newline.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bench: fabric {}, {} replicas, {} clients, {} ops of {}-byte values",
            self.fabric, self.replicas, self.clients, self.ops, self.value_bytes
        );
        let _ = writeln!(out, "  throughput   {:.0} ops/s", self.ops_per_s);
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>10} {:>10} {:>10}",
            "latency (us)", "p50", "p99", "p99.9", "max"
        );
        for (name, s) in [
            ("end-to-end", &self.e2e_us),
            ("replication", &self.replication_us),
        ] {
            let _ = writeln!(
                out,
                "  {:<12} {:>10} {:>10} {:>10} {:>10}",
                name,
                fmt_us(s.p50),
                fmt_us(s.p99),
                fmt_us(s.p999),
                fmt_us(s.max)
            );
        }
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>10} {:>10} {:>10}",
            "floor",
            fmt_us(self.floor_us.p50),
            fmt_us(self.floor_us.p99),
            "-",
            "-"
        );
        let _ = writeln!(
            out,
            "  e2e p50 = {} x floor p50",
            fmt_ratio(self.e2e_over_floor())
        );
        let _ = writeln!(
            out,
            "  replication p50 = {} x floor p50",
            fmt_ratio(self.replication_over_floor())
        );
        out
    }
}

/// The result of one `rapax failover` drill.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct FailoverReport {
    /// Fabric the replicas talked over.
    pub fabric: String,
    /// Number of replicas in the cluster.
    pub replicas: usize,
    /// What was done to the leader (for example `kill` or `stop`).
    pub mode: String,
    /// Number of leader failures induced.
    pub kills: usize,
    /// From the leader's failure to a follower suspecting it, in microseconds.
    pub detect_us: Summary3,
    /// From suspicion to the new leader serving, in microseconds.
    pub handover_us: Summary3,
    /// From the leader's failure to the new leader serving, in microseconds.
    pub failover_us: Summary3,
    /// Whether the clients' history across all failovers was linearizable.
    pub linearizable: bool,
}

impl FailoverReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a failover report always serializes")
    }

    /// Writes the report as JSON (with a trailing newline) to `path`.
    pub fn write_json(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }

    /// A multi-line text summary for people, ending with a newline.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "failover: fabric {}, {} replicas, mode {}, {} kills",
            self.fabric, self.replicas, self.mode, self.kills
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>10} {:>10}",
            "latency (us)", "p50", "p99", "max"
        );
        for (name, s) in [
            ("detect", &self.detect_us),
            ("handover", &self.handover_us),
            ("failover", &self.failover_us),
        ] {
            let _ = writeln!(
                out,
                "  {:<12} {:>10} {:>10} {:>10}",
                name,
                fmt_us(s.p50),
                fmt_us(s.p99),
                fmt_us(s.max)
            );
        }
        let verdict = if self.linearizable { "yes" } else { "NO" };
        let _ = writeln!(out, "  linearizable: {verdict}");
        out
    }
}

/// A latency in microseconds with precision that suits its size.
fn fmt_us(latency_us: f64) -> String {
    if latency_us < 10.0 {
        format!("{latency_us:.2}")
    } else if latency_us < 1_000.0 {
        format!("{latency_us:.1}")
    } else {
        format!("{latency_us:.0}")
    }
}

/// A ratio with one decimal, or `n/a` when it is not finite.
fn fmt_ratio(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.1}")
    } else {
        "n/a".to_string()
    }
}

// ------------------------------------------------------------------------------------------------
// Percentile plot

/// Plot width, in SVG user units.
const PLOT_WIDTH: f64 = 900.0;
/// Plot height, in SVG user units.
const PLOT_HEIGHT: f64 = 560.0;
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 50.0;
const MARGIN_BOTTOM: f64 = 70.0;
/// Rightmost point of the x axis, in nines (5 nines = p99.999).
const MAX_NINES: f64 = 5.0;
/// Points sampled from each series' histogram.
const POINTS_PER_SERIES: usize = 200;
/// Lowest latency drawn, in microseconds (the recorder's 1 ns resolution).
const MIN_PLOT_US: f64 = 0.001;
/// Series colours, reused in order when there are more series.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// x-axis ticks: (nines, label).
const NINES_TICKS: [(f64, &str); 6] = [
    (0.0, "0"),
    (1.0, "90"),
    (2.0, "99"),
    (3.0, "99.9"),
    (4.0, "99.99"),
    (5.0, "99.999"),
];

/// The percentile `q` (0 to 100) on the "nines" scale: `-log10(1 - q/100)`, capped at 5.
fn nines(q: f64) -> f64 {
    let tail = 1.0 - q / 100.0;
    if tail <= 0.0 {
        MAX_NINES
    } else {
        (-tail.log10()).clamp(0.0, MAX_NINES)
    }
}

/// Escapes text for XML content and attribute values.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// A tick value in microseconds, printed without spurious digits.
fn fmt_tick_us(value_us: f64, decade: i32) -> String {
    let decimals = usize::try_from(-decade).unwrap_or(0);
    format!("{value_us:.decimals$}")
}

/// A self-contained SVG latency-percentile plot, one line per series.
///
/// The x axis is the percentile on a log "nines" scale (0, 90, 99, ... 99.999); the y axis is the
/// latency in microseconds on a log scale with ticks at 1-2-5 per decade. Each series is sampled
/// at 200 points; an empty series appears in the legend only.
pub fn percentile_plot_svg(series: &[(&str, &LatencyRecorder)], title: &str) -> String {
    // Sample every series on the nines scale.
    let sampled: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, recorder)| {
            if recorder.is_empty() {
                return Vec::new();
            }
            (0..POINTS_PER_SERIES)
                .map(|i| {
                    let x_nines = MAX_NINES * i as f64 / (POINTS_PER_SERIES - 1) as f64;
                    let q = 100.0 * (1.0 - 10f64.powf(-x_nines));
                    (nines(q), recorder.percentile_us(q).max(MIN_PLOT_US))
                })
                .collect()
        })
        .collect();

    // y range: whole decades covering the data.
    let (mut lo_us, mut hi_us) = (f64::INFINITY, 0.0f64);
    for &(_, y) in sampled.iter().flatten() {
        lo_us = lo_us.min(y);
        hi_us = hi_us.max(y);
    }
    if !lo_us.is_finite() {
        (lo_us, hi_us) = (1.0, 10.0);
    }
    let lo_decade = lo_us.log10().floor() as i32;
    let mut hi_decade = hi_us.log10().ceil() as i32;
    if hi_decade <= lo_decade {
        hi_decade = lo_decade + 1;
    }
    let (log_lo, log_hi) = (f64::from(lo_decade), f64::from(hi_decade));

    let plot_w = PLOT_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = PLOT_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let px = |x_nines: f64| MARGIN_LEFT + plot_w * x_nines / MAX_NINES;
    let py = |y_us: f64| MARGIN_TOP + plot_h * (1.0 - (y_us.log10() - log_lo) / (log_hi - log_lo));

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>
<text x="{tx:.1}" y="28" text-anchor="middle" font-size="16">{title}</text>"#,
        w = PLOT_WIDTH,
        h = PLOT_HEIGHT,
        tx = PLOT_WIDTH / 2.0,
        title = xml_escape(title),
    );

    // Grid and x ticks.
    let (top, bottom) = (MARGIN_TOP, MARGIN_TOP + plot_h);
    let (left, right) = (MARGIN_LEFT, MARGIN_LEFT + plot_w);
    svg.push_str("<g stroke=\"#dddddd\" stroke-width=\"1\">\n");
    for (x_nines, _) in NINES_TICKS {
        let x = px(x_nines);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}"/>"#
        );
    }
    let mut y_ticks = Vec::new();
    for decade in lo_decade..=hi_decade {
        for mantissa in [1.0, 2.0, 5.0] {
            let value_us = mantissa * 10f64.powi(decade);
            if value_us.log10() <= log_hi + 1e-9 {
                y_ticks.push((value_us, decade));
            }
        }
    }
    for &(value_us, _) in &y_ticks {
        let y = py(value_us);
        let _ = writeln!(
            svg,
            r#"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}"/>"#
        );
    }
    svg.push_str("</g>\n");

    // Axes and tick labels.
    let _ = writeln!(
        svg,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#000000"/>"##
    );
    for (x_nines, label) in NINES_TICKS {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            px(x_nines),
            bottom + 18.0
        );
    }
    for &(value_us, decade) in &y_ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            py(value_us) + 4.0,
            fmt_tick_us(value_us, decade)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        left + plot_w / 2.0,
        PLOT_HEIGHT - 25.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="22" y="{y:.1}" text-anchor="middle" transform="rotate(-90 22 {y:.1})">latency (us)</text>"#,
        y = top + plot_h / 2.0
    );

    // One line per non-empty series.
    for (i, points) in sampled.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let colour = PALETTE[i % PALETTE.len()];
        let mut coords = String::new();
        for (j, &(x_nines, y_us)) in points.iter().enumerate() {
            if j > 0 {
                coords.push(' ');
            }
            let _ = write!(coords, "{:.1},{:.1}", px(x_nines), py(y_us));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>"#
        );
    }

    // Legend, top left inside the plot, on a white box so grid lines do not run through it.
    let longest_chars = series
        .iter()
        .map(|(name, _)| name.chars().count() + 13)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#999999"/>"##,
        left + 6.0,
        top + 6.0,
        48.0 + 7.0 * longest_chars as f64,
        10.0 + 18.0 * series.len() as f64
    );
    for (i, (name, recorder)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let y = top + 18.0 + 18.0 * i as f64;
        let note = if recorder.is_empty() {
            " (no samples)"
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3"/>
<text x="{:.1}" y="{:.1}">{}{note}</text>"#,
            left + 12.0,
            left + 36.0,
            left + 42.0,
            y + 4.0,
            xml_escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes [`percentile_plot_svg`] of `series` to `path`.
pub fn write_plot(
    path: impl AsRef<Path>,
    series: &[(&str, &LatencyRecorder)],
    title: &str,
) -> io::Result<()> {
    std::fs::write(path, percentile_plot_svg(series, title))
}

// ------------------------------------------------------------------------------------------------
// Progress

/// A progress bar over `total` steps showing elapsed time, position, rate and ETA.
///
/// The bar is hidden (drawn nowhere, still counting) when standard error is not a terminal, so
/// logs stay clean.
pub fn progress_bar(total: u64, message: &str) -> indicatif::ProgressBar {
    // Hidden bars keep their length so callers can still read position and length back.
    let target = if io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    )
    .expect("constant progress template is valid");
    indicatif::ProgressBar::with_draw_target(Some(total), target)
        .with_style(style)
        .with_message(message.to_string())
}

// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn keys(json: &str) -> BTreeSet<String> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        value.as_object().unwrap().keys().cloned().collect()
    }

    fn key_set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * relative
    }

    fn one_to_thousand_us() -> LatencyRecorder {
        let mut recorder = LatencyRecorder::new();
        for us in 1..=1000u64 {
            recorder.record_ns(us * 1000);
        }
        recorder
    }

    fn bench_report() -> BenchReport {
        BenchReport {
            fabric: "shm".into(),
            replicas: 3,
            ops: 1000,
            value_bytes: 64,
            clients: 2,
            e2e_us: Summary4 {
                p50: 4.2,
                p99: 9.0,
                p999: 12.0,
                max: 30.0,
            },
            replication_us: Summary4 {
                p50: 3.0,
                p99: 5.0,
                p999: 7.0,
                max: 20.0,
            },
            floor_us: Summary2 { p50: 2.0, p99: 3.0 },
            ops_per_s: 250_000.0,
        }
    }

    #[test]
    fn report_percentiles_of_known_inputs() {
        let recorder = one_to_thousand_us();
        assert_eq!(recorder.len(), 1000);
        assert!(!recorder.is_empty());
        // Three significant figures: within 0.1% of the exact value.
        assert!(
            close(recorder.percentile_us(50.0), 500.0, 0.001),
            "{}",
            recorder.percentile_us(50.0)
        );
        assert!(close(recorder.percentile_us(99.0), 990.0, 0.001));
        assert!(close(recorder.percentile_us(99.9), 999.0, 0.001));
        assert!(close(recorder.percentile_us(0.0), 1.0, 0.001));
        assert!(close(recorder.max_us(), 1000.0, 0.001));
        // Out-of-range q clamps.
        assert_eq!(recorder.percentile_us(150.0), recorder.percentile_us(100.0));
        assert_eq!(recorder.percentile_us(-5.0), recorder.percentile_us(0.0));

        let s = recorder.summary();
        assert!(close(s.p50, 500.0, 0.001) && close(s.p99, 990.0, 0.001));
        assert!(close(s.p999, 999.0, 0.001) && close(s.max, 1000.0, 0.001));
        let s3 = recorder.summary3();
        assert_eq!((s3.p50, s3.p99, s3.max), (s.p50, s.p99, s.max));
        let s2 = recorder.summary2();
        assert_eq!((s2.p50, s2.p99), (s.p50, s.p99));
    }

    #[test]
    fn report_empty_recorder_reports_zero() {
        let recorder = LatencyRecorder::default();
        assert!(recorder.is_empty());
        assert_eq!(recorder.len(), 0);
        assert_eq!(
            recorder.summary(),
            Summary4 {
                p50: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0
            }
        );
    }

    #[test]
    fn report_merge_adds_samples() {
        let mut low = LatencyRecorder::new();
        let mut high = LatencyRecorder::new();
        for _ in 0..100 {
            low.record_ns(1_000);
            high.record_ns(1_000_000);
        }
        low.merge(&high);
        assert_eq!(low.len(), 200);
        assert!(close(low.percentile_us(25.0), 1.0, 0.001));
        assert!(close(low.percentile_us(75.0), 1000.0, 0.001));
        assert!(close(low.max_us(), 1000.0, 0.001));
    }

    #[test]
    fn report_huge_values_saturate() {
        let mut recorder = LatencyRecorder::new();
        recorder.record_ns(u64::MAX);
        recorder.record_ns(0);
        recorder.record_duration(Duration::from_secs(3600));
        assert_eq!(recorder.len(), 3);
        // Clamped to 60 s = 60e6 us, within histogram precision.
        assert!(
            close(recorder.max_us(), 60_000_000.0, 0.001),
            "{}",
            recorder.max_us()
        );
        assert!(recorder.percentile_us(0.0) <= 0.001);
    }

    #[test]
    fn report_bench_json_keys_are_exact() {
        let report = bench_report();
        let json = report.to_json();
        assert_eq!(
            keys(&json),
            key_set(&[
                "fabric",
                "replicas",
                "ops",
                "value_bytes",
                "clients",
                "e2e_us",
                "replication_us",
                "floor_us",
                "ops_per_s"
            ])
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for name in ["e2e_us", "replication_us"] {
            let inner: BTreeSet<String> =
                value[name].as_object().unwrap().keys().cloned().collect();
            assert_eq!(inner, key_set(&["p50", "p99", "p999", "max"]));
        }
        let floor: BTreeSet<String> = value["floor_us"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(floor, key_set(&["p50", "p99"]));
        assert_eq!(value["e2e_us"]["p50"], 4.2);
        assert_eq!(value["replicas"], 3);
        assert_eq!(value["fabric"], "shm");
    }

    #[test]
    fn report_bench_human_has_ratios() {
        let text = bench_report().human();
        assert!(text.contains("e2e p50 = 2.1 x floor p50"), "{text}");
        assert!(text.contains("replication p50 = 1.5 x floor p50"), "{text}");
        assert!(text.contains("250000 ops/s"), "{text}");

        let mut no_floor = bench_report();
        no_floor.floor_us = Summary2 { p50: 0.0, p99: 0.0 };
        assert!(no_floor.human().contains("e2e p50 = n/a x floor p50"));
    }

    #[test]
    fn report_failover_json_keys() {
        let s = Summary3 {
            p50: 100.0,
            p99: 200.0,
            max: 300.0,
        };
        let report = FailoverReport {
            fabric: "udp".into(),
            replicas: 3,
            mode: "kill".into(),
            kills: 5,
            detect_us: s,
            handover_us: s,
            failover_us: s,
            linearizable: true,
        };
        let json = report.to_json();
        assert_eq!(
            keys(&json),
            key_set(&[
                "fabric",
                "replicas",
                "mode",
                "kills",
                "detect_us",
                "handover_us",
                "failover_us",
                "linearizable"
            ])
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for name in ["detect_us", "handover_us", "failover_us"] {
            let inner: BTreeSet<String> =
                value[name].as_object().unwrap().keys().cloned().collect();
            assert_eq!(inner, key_set(&["p50", "p99", "max"]));
        }
        assert_eq!(value["linearizable"], true);
        assert_eq!(value["kills"], 5);
        let text = report.human();
        assert!(
            text.contains("linearizable: yes") && text.contains("5 kills"),
            "{text}"
        );
    }

    #[test]
    fn report_write_json_round_trips() {
        let path = std::env::temp_dir().join(format!("rapax-report-{}.json", std::process::id()));
        let report = bench_report();
        report.write_json(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text.trim_end(), report.to_json());
    }

    #[test]
    fn report_svg_has_one_polyline_per_series_and_legend() {
        let fast = one_to_thousand_us();
        let mut slow = LatencyRecorder::new();
        for us in 1..=1000u64 {
            slow.record_ns(us * 50_000);
        }
        let svg = percentile_plot_svg(&[("floor", &fast), ("replication", &slow)], "latency");
        assert!(svg.starts_with("<?xml"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">floor</text>") && svg.contains(">replication</text>"));
        for label in ["90", "99", "99.9", "99.99", "99.999"] {
            assert!(svg.contains(&format!(">{label}</text>")), "x tick {label}");
        }
        // Data spans 1 us .. 50 ms: decade ticks 1 .. 100000 us are all labelled.
        for label in ["1", "10", "100", "1000", "10000", "100000", "2", "5"] {
            assert!(svg.contains(&format!(">{label}</text>")), "y tick {label}");
        }
        // ~200 points per series.
        let polyline = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert_eq!(polyline.matches(',').count(), POINTS_PER_SERIES);
        // Every coordinate lies inside the plot area.
        let points = polyline
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>");
        for pair in points.split(' ') {
            let (x, y) = pair.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((MARGIN_LEFT - 0.1..=PLOT_WIDTH - MARGIN_RIGHT + 0.1).contains(&x));
            assert!((MARGIN_TOP - 0.1..=PLOT_HEIGHT - MARGIN_BOTTOM + 0.1).contains(&y));
        }
    }

    #[test]
    fn report_svg_escapes_text() {
        let recorder = one_to_thousand_us();
        let svg = percentile_plot_svg(&[("a<b & \"c\"", &recorder)], "p<99 & friends");
        assert!(svg.contains("p&lt;99 &amp; friends"));
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
        assert!(!svg.contains("p<99") && !svg.contains("a<b"));
        // Every '&' starts an entity.
        for (i, _) in svg.match_indices('&') {
            let rest = &svg[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| rest.starts_with(e)),
                "bare & at {i}"
            );
        }
    }

    #[test]
    fn report_svg_handles_empty_series() {
        let empty = LatencyRecorder::new();
        let svg = percentile_plot_svg(&[("nothing", &empty)], "empty");
        assert_eq!(svg.matches("<polyline").count(), 0);
        assert!(svg.contains("nothing (no samples)"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn report_nines_scale() {
        assert_eq!(nines(0.0), 0.0);
        assert!(close(nines(90.0), 1.0, 1e-9));
        assert!(close(nines(99.9), 3.0, 1e-9));
        assert_eq!(nines(100.0), MAX_NINES);
        assert_eq!(nines(99.999_999), MAX_NINES);
    }

    #[test]
    fn report_progress_bar_has_length() {
        let bar = progress_bar(10, "ops");
        bar.inc(3);
        // Hidden or not, the bar tracks its position.
        assert_eq!(bar.length(), Some(10));
        assert_eq!(bar.position(), 3);
        bar.finish_and_clear();
    }
}
