//! SVG charts drawn with plotters' SVG backend: text in, text out, nothing to fetch when the
//! page is viewed.

use plotters::prelude::*;
use std::ops::Range;

/// Pixel size of every chart.
const SIZE: (u32, u32) = (860, 420);

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the {chart} chart failed: {detail}")]
pub struct ChartError {
    chart: String,
    detail: String,
}

fn err<E: std::fmt::Debug>(chart: &str) -> impl FnOnce(E) -> ChartError + use<E> {
    let chart = chart.to_owned();
    move |e| ChartError {
        chart,
        detail: format!("{e:?}"),
    }
}

/// One line of a chart: its legend name and its points.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) in the chart's units.
    pub points: Vec<(f64, f64)>,
    /// Palette index; `None`: the series' position (so related series can share a colour).
    pub colour: Option<usize>,
    /// Drawn dashed (a secondary figure of the same target, e.g. the p50 beside the p99).
    pub dashed: bool,
}

/// The colour of series `i`: a palette that stays apart in print and for most colour vision.
pub fn colour(i: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(120, 120, 120),
        RGBColor(0, 0, 0),
    ];
    P[i % P.len()]
}

/// The range of `values` with a margin, never empty.
fn span(values: impl Iterator<Item = f64>, from_zero: bool) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    (if from_zero { lo } else { lo - pad })..hi + pad
}

/// Labels and axes of a line chart.
pub struct Axes<'a> {
    /// Chart title.
    pub title: &'a str,
    /// X axis description.
    pub x: &'a str,
    /// Y axis description.
    pub y: &'a str,
    /// Formats an x value for the axis.
    pub x_label: &'a dyn Fn(&f64) -> String,
    /// X range; `None`: from the data.
    pub x_range: Option<Range<f64>>,
    /// Draw a marker at every point (curves with few points, such as sweeps).
    pub markers: bool,
}

/// A vertical line at one moment of a timeline (a kill, a recovery).
#[derive(Debug, Clone, Default)]
pub struct Mark {
    /// Where, in x units.
    pub x: f64,
    /// The legend entry; marks sharing one are one kind of event (listed once).
    pub kind: String,
    /// Palette index.
    pub colour: usize,
    /// Drawn dashed (events that follow another, e.g. recoveries after a kill).
    pub dashed: bool,
    /// Text at the top of the line (a cycle number), if any.
    pub label: Option<String>,
}

/// A shaded stretch of the x axis (a failover window), in the colour of palette index
/// `colour`.
#[derive(Debug, Clone, Copy)]
pub struct Band {
    /// From, in x units.
    pub from: f64,
    /// To.
    pub to: f64,
    /// Palette index.
    pub colour: usize,
}

/// A line chart of several series overlaid, with a legend.
pub fn lines(axes: &Axes<'_>, series: &[Series]) -> Result<String, ChartError> {
    timeline(axes, series, &[], &[])
}

/// A line chart with events on it: shaded `bands` behind the series, and vertical `marks`
/// across it (one legend entry per kind of mark).
pub fn timeline(
    axes: &Axes<'_>,
    series: &[Series],
    marks: &[Mark],
    bands: &[Band],
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err(axes.title))?;
        let xs = axes.x_range.clone().unwrap_or_else(|| {
            span(
                series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
                false,
            )
        });
        let mut ys = span(
            series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
            true,
        );
        if !marks.is_empty() {
            // Marks run the whole height: the data keeps the lower part, the legend of the
            // series and marks the upper.
            ys.end = ys.start + (ys.end - ys.start) * 2.2;
        }
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.title, ("sans-serif", 20))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(xs, ys)
            .map_err(err(axes.title))?;
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .x_label_formatter(axes.x_label)
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(err(axes.title))?;
        let (x_span, y_span) = (chart.x_range(), chart.y_range());
        chart
            .draw_series(bands.iter().map(|b| {
                Rectangle::new(
                    [(b.from, y_span.start), (b.to, y_span.end)],
                    colour(b.colour).mix(0.12).filled(),
                )
            }))
            .map_err(err(axes.title))?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(s.colour.unwrap_or(i));
            let drawn = if s.dashed {
                chart.draw_series(DashedLineSeries::new(
                    s.points.iter().copied(),
                    6,
                    4,
                    c.stroke_width(2),
                ))
            } else {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            };
            let dashed = s.dashed;
            drawn
                .map_err(err(axes.title))?
                .label(&s.name)
                .legend(move |(x, y)| {
                    // A dashed series shows a shorter stroke in the legend.
                    let to = if dashed { x + 8 } else { x + 18 };
                    PathElement::new(vec![(x, y), (to, y)], c.stroke_width(2))
                });
            // A series of a point or few (a short run's timeline) would hardly show as a line.
            if axes.markers || s.points.len() < 5 {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(err(axes.title))?;
            }
        }
        let mut kinds: Vec<&str> = Vec::new();
        for m in marks.iter().filter(|m| x_span.contains(&m.x)) {
            let c = colour(m.colour);
            let line = vec![(m.x, y_span.start), (m.x, y_span.end)];
            let drawn = if m.dashed {
                chart.draw_series(DashedLineSeries::new(line, 5, 4, c.stroke_width(1)))
            } else {
                chart.draw_series(LineSeries::new(line, c.stroke_width(2)))
            }
            .map_err(err(axes.title))?;
            if !kinds.contains(&m.kind.as_str()) {
                kinds.push(&m.kind);
                let dashed = m.dashed;
                drawn.label(&m.kind).legend(move |(x, y)| {
                    let to = if dashed { x + 8 } else { x + 18 };
                    PathElement::new(vec![(x, y), (to, y)], c.stroke_width(2))
                });
            }
            if let Some(text) = &m.label {
                // At the top of the line, a few pixels to its right.
                let at = EmptyElement::at((m.x, y_span.end))
                    + Text::new(
                        text.clone(),
                        (3, 3),
                        ("sans-serif", 13).into_font().color(&c),
                    );
                chart
                    .draw_series(std::iter::once(at))
                    .map_err(err(axes.title))?;
            }
        }
        if !series.is_empty() || !kinds.is_empty() {
            chart
                .configure_series_labels()
                .position(if marks.is_empty() {
                    SeriesLabelPosition::UpperLeft
                } else {
                    SeriesLabelPosition::UpperRight
                })
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err(axes.title))?;
        }
        root.present().map_err(err(axes.title))?;
    }
    Ok(svg)
}

/// A number for an axis: no more digits than it needs.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The x coordinate of quantile `q` on a percentile plot: log10(1 / (1 - q)), so that 90 %,
/// 99 %, 99.9 % … are evenly spaced (HdrHistogram's percentile plot).
pub fn quantile_x(q: f64) -> f64 {
    (1.0 / (1.0 - q).max(1e-9)).log10()
}

/// The axis label at x on a percentile plot.
pub fn quantile_label(x: &f64) -> String {
    if (x - x.round()).abs() > 1e-6 {
        // Only the decades are labelled: between them the percentages are not round.
        return String::new();
    }
    let q = 1.0 - 10f64.powf(-x);
    let p = q * 100.0;
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        let digits = (x.round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    }
}

/// A percentile plot: latency (ms) against percentile on the log axis, several runs overlaid.
/// Each series' points are (quantile, latency ms).
pub fn percentiles(title: &str, series: &[Series]) -> Result<String, ChartError> {
    // The last point (q = 1, the maximum) would sit at infinity: it is drawn half a decade
    // past the rarest percentile before it.
    let mapped: Vec<Series> = series
        .iter()
        .map(|s| {
            let finite = s
                .points
                .iter()
                .filter(|p| p.0 < 1.0)
                .map(|p| quantile_x(p.0))
                .fold(0.0f64, f64::max);
            Series {
                name: s.name.clone(),
                colour: s.colour,
                dashed: s.dashed,
                points: s
                    .points
                    .iter()
                    .map(|&(q, v)| (if q < 1.0 { quantile_x(q) } else { finite + 0.5 }, v))
                    .collect(),
            }
        })
        .collect();
    let top = mapped
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(2.0f64, f64::max)
        .ceil();
    lines(
        &Axes {
            title,
            x: "percentile (log scale: each step ten times rarer)",
            y: "latency, ms",
            x_label: &quantile_label,
            x_range: Some(0.0..top),
            markers: false,
        },
        &mapped,
    )
}

/// One group of bars: its label and one value per series (the same series in every group).
#[derive(Debug, Clone)]
pub struct BarGroup {
    /// Label under the group.
    pub label: String,
    /// One value per series, in the order of the series names.
    pub values: Vec<f64>,
}

/// Grouped bars: per group, one bar per series side by side (e.g. ours beside ring and
/// aws-lc-rs for each size).
pub fn grouped_bars(
    title: &str,
    y: &str,
    names: &[String],
    groups: &[BarGroup],
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err("bar"))?;
        let top = span(groups.iter().flat_map(|g| g.values.iter().copied()), true);
        let n = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..n - 0.5, top)
            .map_err(err("bar"))?;
        let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
        let label = move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len().max(1) * 2 + 1)
            .x_label_formatter(&label)
            .y_desc(y)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(err("bar"))?;
        let k = names.len().max(1) as f64;
        let width = 0.8 / k;
        for (si, name) in names.iter().enumerate() {
            let c = colour(si);
            chart
                .draw_series(groups.iter().enumerate().filter_map(|(gi, g)| {
                    let v = *g.values.get(si)?;
                    let x0 = gi as f64 - 0.4 + si as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.92, v)],
                        c.filled(),
                    ))
                }))
                .map_err(err("bar"))?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err("bar"))?;
        root.present().map_err(err("bar"))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_spaces_the_nines_evenly() {
        assert!((quantile_x(0.9) - 1.0).abs() < 1e-9);
        assert!((quantile_x(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(quantile_label(&0.0), "0%");
        assert_eq!(quantile_label(&1.0), "90%");
        assert_eq!(quantile_label(&2.0), "99%");
        assert_eq!(quantile_label(&3.0), "99.9%");
        assert_eq!(quantile_label(&4.0), "99.99%");
        assert!(quantile_x(1.0).is_finite());
    }

    #[test]
    fn charts_are_svg_with_a_path_per_series() {
        let s = |name: &str, k: f64| Series {
            name: name.into(),
            points: (0..10).map(|i| (i as f64 / 10.0, k * i as f64)).collect(),
            ..Series::default()
        };
        let svg = percentiles("latency", &[s("a", 1.0), s("b", 2.0)]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("\nlatency, ms\n") && svg.contains("\na\n") && svg.contains("\nb\n"));
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        let bars = grouped_bars(
            "speed",
            "GB/s",
            &["ours".into(), "ring".into()],
            &[
                BarGroup {
                    label: "64 B".into(),
                    values: vec![1.0, 0.5],
                },
                BarGroup {
                    label: "1 KiB".into(),
                    values: vec![3.0, 2.0],
                },
            ],
        )
        .unwrap();
        assert!(bars.contains("\n64 B\n") && bars.contains("\nring\n"));
        assert!(bars.matches("<rect").count() >= 5, "{bars}");
    }
}
