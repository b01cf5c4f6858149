//! The SVG plots of `BENCH.md`, drawn here: lines over linear or log axes,
//! with ticks and a legend.

use std::fmt::Write as _;

pub(super) struct Series {
    pub(super) name: String,
    pub(super) points: Vec<(f64, f64)>,
}

pub(super) struct Plot<'a> {
    pub(super) title: &'a str,
    pub(super) x_label: &'a str,
    pub(super) y_label: &'a str,
    pub(super) x_ticks: Option<Vec<(f64, String)>>,
    pub(super) log_x: bool,
    pub(super) log_y: bool,
    pub(super) series: Vec<Series>,
}

const COLORS: [&str; 6] = [
    "#d62728", "#ff7f0e", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Plot<'_> {
    /// A line chart with axes, ticks and a legend, as plain SVG text.
    pub(super) fn svg(&self) -> String {
        let (w, h) = (720.0, 420.0);
        let (left, right, top, bottom) = (80.0, 170.0, 40.0, 60.0);
        let tx = |v: f64| if self.log_x { v.max(1e-9).log10() } else { v };
        let ty = |v: f64| if self.log_y { v.max(1e-9).log10() } else { v };
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .collect();
        let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(tx(p.0)), b.max(tx(p.0)))
        });
        let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(ty(p.1)), b.max(ty(p.1)))
        });
        if all.is_empty() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if !self.log_y {
            y0 = y0.min(0.0);
        }
        if (x1 - x0).abs() < 1e-9 {
            x1 = x0 + 1.0;
        }
        if (y1 - y0).abs() < 1e-9 {
            y1 = y0 + 1.0;
        }
        y1 += (y1 - y0) * 0.05;
        let px = |v: f64| left + (tx(v) - x0) / (x1 - x0) * (w - left - right);
        let py = |v: f64| h - bottom - (ty(v) - y0) / (y1 - y0) * (h - top - bottom);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12"><rect width="{w}" height="{h}" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"##,
            (w - right + left) / 2.0,
            escape(self.title)
        );
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"##,
            h - bottom,
            w - right,
            h - bottom,
            h - bottom
        );
        let x_ticks: Vec<(f64, String)> = match &self.x_ticks {
            Some(t) => t.clone(),
            None => ticks(x0, x1, self.log_x),
        };
        for (v, label) in x_ticks {
            let x = px(v);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                h - bottom,
                h - bottom + 5.0,
                h - bottom + 18.0,
                escape(&label)
            );
        }
        for (v, label) in ticks(y0, y1, self.log_y) {
            let y = py(v);
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left,
                w - right,
                left - 6.0,
                y + 4.0,
                escape(&label)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"##,
            (w - right + left) / 2.0,
            h - 18.0,
            escape(self.x_label),
            (h - bottom + top) / 2.0,
            escape(self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<String> = s
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
                points.join(" ")
            );
            for (x, y) in &s.points {
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"##,
                    px(*x),
                    py(*y)
                );
            }
            let ly = top + 20.0 + 20.0 * i as f64;
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"##,
                w - right + 15.0,
                w - right + 40.0,
                w - right + 46.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// Tick positions (in data units) and labels over a transformed range.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<(f64, String)> {
    if log {
        let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
        return (a..=b)
            .map(|e| 10f64.powi(e))
            .filter(|v| v.log10() >= lo - 1e-9 && v.log10() <= hi + 1e-9)
            .map(|v| (v, format_number(v)))
            .collect();
    }
    let span = hi - lo;
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(magnitude * 10.0);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 {
        out.push((v, format_number(v)));
        v += step;
    }
    out
}

fn format_number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 1.0 || v == 0.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{}", (v * 10000.0).round() / 10000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_every_series() {
        let plot = Plot {
            title: "t <1>",
            x_label: "x",
            y_label: "y",
            x_ticks: None,
            log_x: true,
            log_y: false,
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(0.5, 0.0), (50.0, 1.0)],
                },
                Series {
                    name: "b".into(),
                    points: vec![(1.0, 0.5)],
                },
            ],
        };
        let svg = plot.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains(">10<"), "a decade tick on the log axis");
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
