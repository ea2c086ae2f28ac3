//! Plain SVG charts for the benchmark report: line charts (latency CDF, throughput against
//! clients) and a histogram (election times). Hand-written rather than a plotting crate so
//! the report needs no fonts or native libraries and stays one self-contained HTML file.

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 360.0;
/// Margins: left (tick labels), right, top (title), bottom (axis label).
const ML: f64 = 70.0;
const MR: f64 = 160.0;
const MT: f64 = 30.0;
const MB: f64 = 50.0;
/// Line colours, cycled.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// How an axis maps values to positions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear,
    /// Powers of ten evenly spaced (values must be positive).
    Log,
}

/// A line chart of named series of (x, y) points.
pub struct LineChart<'a> {
    /// Shown above the plot.
    pub title: &'a str,
    /// Under the x axis.
    pub x_label: &'a str,
    /// Beside the y axis.
    pub y_label: &'a str,
    /// The x axis's scale.
    pub x_scale: Scale,
    /// (legend name, points).
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Maps a value range onto pixels.
struct Axis {
    lo: f64,
    hi: f64,
    scale: Scale,
}

impl Axis {
    fn fit(values: impl Iterator<Item = f64>, scale: Scale) -> Axis {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && (scale == Scale::Linear || *v > 0.0)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        match scale {
            Scale::Linear => {
                let lo = if lo >= 0.0 { 0.0 } else { lo };
                let hi = if hi <= lo { lo + 1.0 } else { hi };
                Axis { lo, hi, scale }
            }
            Scale::Log => Axis {
                lo: 10f64.powf(lo.log10().floor()),
                hi: 10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
                scale,
            },
        }
    }

    /// Position of `v` in [0, 1].
    fn frac(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => (v - self.lo) / (self.hi - self.lo),
            Scale::Log => {
                (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
            }
        }
    }

    /// Tick values: powers of ten on a log axis, about five round steps otherwise.
    fn ticks(&self) -> Vec<f64> {
        match self.scale {
            Scale::Log => {
                let (a, b) = (
                    self.lo.log10().round() as i32,
                    self.hi.log10().round() as i32,
                );
                (a..=b).map(|e| 10f64.powi(e)).collect()
            }
            Scale::Linear => {
                let raw = (self.hi - self.lo) / 5.0;
                let mag = 10f64.powf(raw.log10().floor());
                let step = [1.0, 2.0, 5.0, 10.0]
                    .iter()
                    .map(|m| m * mag)
                    .find(|s| *s >= raw)
                    .unwrap_or(raw);
                let mut t = (self.lo / step).ceil() * step;
                let mut out = Vec::new();
                while t <= self.hi + step * 1e-9 {
                    out.push(t);
                    t += step;
                }
                out
            }
        }
    }
}

/// A tick label: short and without float noise.
fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-2) {
        format!("{v:.0e}")
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The frame, title, axes with ticks, and labels shared by both chart kinds.
fn frame(out: &mut String, title: &str, x: &Axis, y: &Axis, x_label: &str, y_label: &str) {
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">{}</text>\
         <rect x=\"{ML}\" y=\"{MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>",
        ML + pw / 2.0,
        esc(title)
    );
    for t in x.ticks() {
        let px = ML + x.frac(t) * pw;
        let _ = write!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{MT}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            MT + ph,
            MT + ph + 14.0,
            label(t)
        );
    }
    for t in y.ticks() {
        let py = MT + ph - y.frac(t) * ph;
        let _ = write!(
            out,
            "<line x1=\"{ML}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 5.0,
            py + 4.0,
            label(t)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        ML + pw / 2.0,
        H - 12.0,
        esc(x_label),
        MT + ph / 2.0,
        esc(y_label)
    );
}

impl LineChart<'_> {
    /// The chart as an SVG element.
    pub fn render(&self) -> String {
        let points = || self.series.iter().flat_map(|(_, p)| p.iter());
        let x = Axis::fit(points().map(|p| p.0), self.x_scale);
        let y = Axis::fit(points().map(|p| p.1), Scale::Linear);
        let mut out = String::new();
        frame(&mut out, self.title, &x, &y, self.x_label, self.y_label);
        let (pw, ph) = (W - ML - MR, H - MT - MB);
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = pts
                .iter()
                .filter(|(px, py)| px.is_finite() && py.is_finite())
                .map(|(px, py)| {
                    format!(
                        "{:.1},{:.1}",
                        ML + x.frac(*px) * pw,
                        MT + ph - y.frac(*py) * ph
                    )
                })
                .collect();
            let _ = write!(
                out,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" points=\"{}\"/>",
                path.join(" ")
            );
            let ly = MT + 12.0 + 16.0 * i as f64;
            let _ = write!(
                out,
                "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                W - MR + 10.0,
                W - MR + 30.0,
                W - MR + 35.0,
                ly + 4.0,
                esc(name)
            );
        }
        out.push_str("</svg>");
        out
    }
}

/// A histogram of `values` in bins of `width`, as an SVG element.
pub fn histogram(title: &str, x_label: &str, values: &[f64], width: f64) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let lo = if lo.is_finite() {
        (lo / width).floor() * width
    } else {
        0.0
    };
    let mut bins: Vec<u64> = Vec::new();
    for v in values {
        let b = ((v - lo) / width).floor().max(0.0) as usize;
        if bins.len() <= b {
            bins.resize(b + 1, 0);
        }
        bins[b] += 1;
    }
    let hi = lo + width * bins.len().max(1) as f64;
    let x = Axis {
        lo,
        hi,
        scale: Scale::Linear,
    };
    // At least 0..5 on the count axis, so its ticks are whole numbers.
    let y = Axis::fit(bins.iter().map(|c| *c as f64).chain([5.0]), Scale::Linear);
    let mut out = String::new();
    frame(&mut out, title, &x, &y, x_label, "trials");
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    for (i, c) in bins.iter().enumerate().filter(|(_, c)| **c > 0) {
        let x0 = ML + x.frac(lo + width * i as f64) * pw;
        let x1 = ML + x.frac(lo + width * (i + 1) as f64) * pw;
        let top = MT + ph - y.frac(*c as f64) * ph;
        let _ = write!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"white\"/>",
            (x1 - x0).max(1.0),
            MT + ph - top,
            COLOURS[0]
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_draws_each_series_inside_the_plot_area() {
        let chart = LineChart {
            title: "t <1>",
            x_label: "clients",
            y_label: "req/s",
            x_scale: Scale::Log,
            series: vec![
                ("a".into(), vec![(1.0, 10.0), (64.0, 500.0), (256.0, 400.0)]),
                ("b".into(), vec![(1.0, 5.0), (256.0, 900.0)]),
            ],
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"), "title escaped");
        // Every plotted point lies within the plot rectangle.
        for poly in svg.split("points=\"").skip(1) {
            for pt in poly.split('"').next().unwrap().split(' ') {
                let (x, y) = pt.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (ML..=W - MR).contains(&x) && (MT..=H - MB).contains(&y),
                    "{pt}"
                );
            }
        }
        // Log ticks are powers of ten covering 1..256.
        let ticks = Axis::fit([1.0, 256.0].into_iter(), Scale::Log).ticks();
        assert_eq!(ticks, vec![1.0, 10.0, 100.0, 1000.0]);
    }

    #[test]
    fn a_histogram_counts_values_into_bins() {
        let svg = histogram("elections", "ms", &[151.0, 155.0, 162.0, 199.0], 10.0);
        // Bins 150, 160 and 190 are drawn (the empty ones are not), plus the background
        // and frame rectangles.
        assert_eq!(svg.matches("<rect").count(), 2 + 3);
        let ticks = Axis::fit([0.0, 2.0].into_iter(), Scale::Linear).ticks();
        assert_eq!(ticks.first(), Some(&0.0));
        assert!(ticks.contains(&2.0), "{ticks:?}");
        assert_eq!(label(0.5), "0.5");
        assert_eq!(label(12.0), "12");
    }
}
