//! The SVG plots of `BENCH.md`, drawn with `plotters`: lines over linear or
//! log axes, with a legend.
//!
//! A log axis is drawn as a linear axis over the values' logarithms, its
//! labels turned back into values: one chart type for every combination.

use plotters::prelude::*;

pub(super) struct Series {
    pub(super) name: String,
    pub(super) points: Vec<(f64, f64)>,
}

pub(super) struct Plot<'a> {
    pub(super) title: &'a str,
    pub(super) x_label: &'a str,
    pub(super) y_label: &'a str,
    /// Labels at given x values (the rest of the axis unlabelled).
    pub(super) x_ticks: Option<Vec<(f64, String)>>,
    pub(super) log_x: bool,
    pub(super) log_y: bool,
    pub(super) series: Vec<Series>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// The smallest value a log axis shows.
const LOG_FLOOR: f64 = 1e-9;

impl Plot<'_> {
    /// A line chart with axes, labels and a legend, as SVG text.
    pub(super) fn svg(&self) -> Result<String, String> {
        let mut svg = String::new();
        self.draw(&mut svg)
            .map_err(|e| format!("drawing {:?}: {e}", self.title))?;
        Ok(svg)
    }

    fn draw(&self, out: &mut String) -> Result<(), Box<dyn std::error::Error + '_>> {
        let tx = |v: f64| {
            if self.log_x {
                v.max(LOG_FLOOR).log10()
            } else {
                v
            }
        };
        let ty = |v: f64| {
            if self.log_y {
                v.max(LOG_FLOOR).log10()
            } else {
                v
            }
        };
        let points: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|(x, y)| (tx(*x), ty(*y))))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let span = |values: &mut dyn Iterator<Item = f64>| {
            let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
            if lo > hi {
                (0.0, 1.0)
            } else if (hi - lo).abs() < 1e-9 {
                (lo - 0.5, hi + 0.5)
            } else {
                (lo, hi)
            }
        };
        let (x0, x1) = span(&mut points.iter().map(|p| p.0));
        let (mut y0, mut y1) = span(&mut points.iter().map(|p| p.1));
        if !self.log_y {
            y0 = y0.min(0.0);
        }
        y1 += (y1 - y0) * 0.05;
        let pad = if self.x_ticks.is_some() {
            (x1 - x0) * 0.05
        } else {
            0.0
        };
        let root = SVGBackend::with_string(out, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0 - pad..x1 + pad, y0..y1)?;
        let unlog = |log: bool, v: f64| if log { 10f64.powf(v) } else { v };
        let x_label = |v: &f64| match &self.x_ticks {
            Some(ticks) => ticks
                .iter()
                .find(|(at, _)| (at - v).abs() < 1e-6)
                .map(|(_, label)| label.clone())
                .unwrap_or_default(),
            None if self.log_x => format_number(two_digits(unlog(true, *v))),
            None => format_number(*v),
        };
        let y_label = |v: &f64| {
            if self.log_y {
                format_number(two_digits(unlog(true, *v)))
            } else {
                format_number(*v)
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .disable_x_mesh()
            .light_line_style(WHITE);
        if let Some(ticks) = &self.x_ticks {
            // One label position per tick: plotters places labels evenly
            // over the range, and the ticks are evenly spaced.
            mesh.x_labels(ticks.len() * 4 + 1);
        }
        mesh.draw()?;
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let line: Vec<(f64, f64)> = s.points.iter().map(|(x, y)| (tx(*x), ty(*y))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// `v` to two significant digits: a log axis's labels fall between round
/// values.
fn two_digits(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(1 - v.log10().floor() as i32);
    (v * scale).round() / scale
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

    /// The text of every `<text>` element.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let (_, rest) = t.split_once('>')?;
                Some(rest.split("</text>").next()?.trim().to_owned())
            })
            .collect()
    }

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
        let svg = plot.svg().expect("drawn");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline"), "a's line: {svg}");
        let texts = texts(&svg);
        for name in ["a", "b", "t &lt;1&gt;"] {
            assert!(texts.contains(&name.to_owned()), "{name} in {texts:?}");
        }
        assert!(
            texts.contains(&"10".to_owned()),
            "a log axis labels values, not logarithms: {texts:?}"
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn given_ticks_label_their_positions_only() {
        let plot = Plot {
            title: "θ",
            x_label: "θ",
            y_label: "y",
            x_ticks: Some(vec![
                (0.0, "0".into()),
                (1.0, "0.6".into()),
                (2.0, "0.99".into()),
            ]),
            log_x: false,
            log_y: true,
            series: vec![Series {
                name: "a".into(),
                points: vec![(0.0, 2.0), (1.0, 20.0), (2.0, 200.0)],
            }],
        };
        let svg = plot.svg().expect("drawn");
        let texts = texts(&svg);
        for label in ["0", "0.6", "0.99"] {
            assert!(texts.contains(&label.to_owned()), "{label} in {texts:?}");
        }
        assert!(!texts.contains(&"0.5".to_owned()), "no label between ticks");
        assert!(texts.contains(&"100".to_owned()), "log y labels: {texts:?}");
    }
}
