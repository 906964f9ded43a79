//! SVG charts for `kvroute replay --compare`: the TTFT distribution of each policy as a CDF, and
//! one bar per policy for a scalar (prefix reuse, mean TTFT).
//!
//! Owns the chart layout and the CDF's sampling; not the figures (the caller computes them) nor
//! where the SVG goes. Drawn with `plotters`' SVG backend, which writes text as `<text>` (no
//! font files are read) and escapes every name for XML.
//!
//! - [`ttft_cdf_svg`]: x is TTFT in milliseconds on a **log10** axis (TTFTs span from tens of
//!   milliseconds to tens of seconds), y the fraction of requests at or below it (0..1); one
//!   line per series through at most [`MAX_CDF_POINTS`] evenly spaced ranks ([`cdf_points`]),
//!   an optional floor ([`crate::floor`]) in near-black, a legend; the axis is labelled at
//!   1-2-5 values.
//! - [`bars_svg`]: one labelled bar per name, the value written above it, the y axis from 0.
//!
//! Pure and deterministic: the same input gives the same bytes.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use thiserror::Error;

/// A named set of values (one policy's TTFTs, in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

/// Why a chart could not be drawn.
#[derive(Debug, Error, PartialEq)]
pub enum PlotError {
    #[error("series {series:?}: {value} cannot be drawn on a log axis (must be finite and > 0)")]
    NotPositive { series: String, value: f64 },
    #[error("bar {name:?}: {value} must be finite and >= 0")]
    BadBar { name: String, value: f64 },
    #[error("drawing the chart: {0}")]
    Draw(String),
}

/// Most points drawn per CDF line: enough to look continuous, few enough to keep files small.
pub const MAX_CDF_POINTS: usize = 512;

/// Line colours in series order (Tableau 10, legible on white), recycled past ten.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Near-black, apart from the axes' pure black.
const FLOOR_COLOUR: RGBColor = RGBColor(40, 40, 40);
const FONT: &str = "sans-serif";

/// Points `(value, fraction ≤ value)` of the empirical CDF of `values`: the sorted values at up
/// to `max_points` evenly spaced ranks, always the smallest and the largest (fraction 1).
pub fn cdf_points(values: &[f64], max_points: usize) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let m = n.min(max_points.max(2));
    if m < 2 {
        return sorted.iter().map(|&v| (v, 1.0)).collect();
    }
    (0..m)
        .map(|k| {
            // Round k (n - 1) / (m - 1): strictly increasing in k since n >= m.
            let i = (k * (n - 1) + (m - 1) / 2) / (m - 1);
            (sorted[i], (i + 1) as f64 / n as f64)
        })
        .collect()
}

/// The TTFT CDF of each series (log10 x axis, milliseconds), with `floor` drawn in black.
pub fn ttft_cdf_svg(series: &[Series<'_>], floor: Option<Series<'_>>) -> Result<String, PlotError> {
    let all: Vec<Series<'_>> = series.iter().copied().chain(floor).collect();
    for s in &all {
        if let Some(&value) = s.values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(PlotError::NotPositive { series: s.name.to_owned(), value });
        }
    }
    let values = all.iter().flat_map(|s| s.values.iter().copied());
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo / 1.25, hi * 1.25) } else { (1.0, 10.0) };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("TTFT distribution", (FONT, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((lo..hi).log_scale().with_key_points(one_two_five(lo, hi)), 0.0..1.0)
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_desc("TTFT (ms, log scale)")
            .y_desc("fraction of requests")
            .x_label_formatter(&|v| axis_label(*v))
            .y_label_formatter(&|v| axis_label(*v))
            .draw()
            .map_err(draw)?;
        let lines = series
            .iter()
            .enumerate()
            .map(|(i, s)| (s, COLOURS[i % COLOURS.len()], 2))
            .chain(floor.as_ref().map(|f| (f, FLOOR_COLOUR, 1)));
        for (s, colour, width) in lines {
            let style = colour.stroke_width(width);
            chart
                .draw_series(LineSeries::new(cdf_points(s.values, MAX_CDF_POINTS), style))
                .map_err(draw)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// One horizontal bar per `(name, value)`, top to bottom, titled `title`, the value axis
/// labelled `unit` and starting at 0 (horizontal so that long setting names stay readable).
pub fn bars_svg(title: &str, unit: &str, bars: &[(&str, f64)]) -> Result<String, PlotError> {
    if let Some(&(name, value)) = bars.iter().find(|b| !(b.1.is_finite() && b.1 >= 0.0)) {
        return Err(PlotError::BadBar { name: name.to_owned(), value });
    }
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    // Names sit left of their bars: about 7 px a character.
    let longest = bars.iter().map(|b| b.0.chars().count()).max().unwrap_or(0);
    let name_area = (7 * longest + 16).max(80) as u32;
    let height = (120 + 34 * bars.len()) as u32;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (name_area + 560, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        draw_bars(&root, title, unit, bars, top, name_area)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

fn draw_bars(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    unit: &str,
    bars: &[(&str, f64)],
    top: f64,
    name_area: u32,
) -> Result<(), PlotError> {
    let n = bars.len();
    // Bar i (from the top) fills most of the unit band [n-1-i, n-i] of the vertical axis.
    let band = |i: usize| (n - 1 - i) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(name_area)
        .build_cartesian_2d(0.0..top, 0.0..n.max(1) as f64)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        // The names are drawn beside their bars below, not as axis values.
        .y_label_formatter(&|_| String::new())
        .x_desc(unit)
        .x_label_formatter(&|v| axis_label(*v))
        .draw()
        .map_err(draw)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, &(_, value))| {
            let colour = COLOURS[i % COLOURS.len()];
            Rectangle::new([(0.0, band(i) + 0.15), (value, band(i) + 0.85)], colour.filled())
        }))
        .map_err(draw)?;
    let value_style = (FONT, 13).into_font().into_text_style(root).pos(Pos::new(HPos::Left, VPos::Center));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, &(_, value))| {
            // Just right of the bar's end.
            Text::new(format_number(value), (value + top * 0.01, band(i) + 0.5), value_style.clone())
        }))
        .map_err(draw)?;
    let name_style = (FONT, 13).into_font().into_text_style(root).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, &(name, _)) in bars.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(0.0, band(i) + 0.5));
        root.draw(&Text::new(name.to_owned(), (x - 8, y), name_style.clone())).map_err(draw)?;
    }
    Ok(())
}

/// The 1-2-5 values of each decade within `lo..=hi`: the labels of a log axis.
fn one_two_five(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    (first..=last).flat_map(|d| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(d))).filter(|v| (lo..=hi).contains(v)).collect()
}

/// An axis label: at most three decimals, without trailing zeros (20, 0.35, 1000).
fn axis_label(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A number with as many decimals as its size needs: 1234, 56.7, 0.260.
fn format_number(v: f64) -> String {
    let size = v.abs();
    if size >= 100.0 {
        format!("{v:.0}")
    } else if size >= 1.0 {
        format!("{v:.1}")
    } else if size == 0.0 {
        "0".to_owned()
    } else {
        format!("{v:.3}")
    }
}

fn draw(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stroke="#RRGGBB"` as the SVG backend writes a colour.
    fn stroke(c: RGBColor) -> String {
        format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2)
    }

    fn is_svg_document(svg: &str) {
        assert!(svg.starts_with("<svg "), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    }

    #[test]
    fn cdf_points_rise_to_one_in_both_coordinates() {
        // 1..=10,000 in a scrambled order.
        let values: Vec<f64> = (0..10_000u32).map(|i| f64::from((i * 7_919) % 10_000 + 1)).collect();
        let points = cdf_points(&values, MAX_CDF_POINTS);
        assert_eq!(points.len(), MAX_CDF_POINTS);
        for w in points.windows(2) {
            assert!(w[0].0 <= w[1].0, "x not monotone: {w:?}");
            assert!(w[0].1 < w[1].1, "y not increasing: {w:?}");
        }
        assert_eq!(points[0], (1.0, 1.0 / 10_000.0));
        assert_eq!(points[MAX_CDF_POINTS - 1], (10_000.0, 1.0));
    }

    #[test]
    fn cdf_of_few_values_keeps_every_value() {
        assert_eq!(cdf_points(&[3.0, 1.0, 2.0], 512), [(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
        assert_eq!(cdf_points(&[5.0], 512), [(5.0, 1.0)]);
        assert!(cdf_points(&[], 512).is_empty());
    }

    #[test]
    fn cdf_chart_has_one_line_and_one_legend_entry_per_series() {
        let a: Vec<f64> = (1..=300).map(f64::from).collect();
        let b: Vec<f64> = (1..=300).map(|v| f64::from(v) * 2.0).collect();
        let floor: Vec<f64> = (1..=300).map(|v| f64::from(v) * 0.5).collect();
        let series = [Series { name: "kv", values: &a }, Series { name: "round_robin", values: &b }];
        let svg = ttft_cdf_svg(&series, Some(Series { name: "floor (infinite cache)", values: &floor })).unwrap();
        is_svg_document(&svg);
        for (name, colour) in
            [("kv", COLOURS[0]), ("round_robin", COLOURS[1]), ("floor (infinite cache)", FLOOR_COLOUR)]
        {
            assert!(svg.contains(&format!(">\n{name}\n</text>")), "legend lacks {name}");
            // The line itself and its legend sample.
            let lines = svg.lines().filter(|l| l.starts_with("<polyline") && l.contains(&stroke(colour)));
            assert_eq!(lines.count(), 2, "{name}");
        }
        assert!(svg.contains("TTFT (ms, log scale)"));
    }

    #[test]
    fn names_are_escaped_for_xml() {
        let v = [10.0, 20.0];
        let svg = ttft_cdf_svg(&[Series { name: "kv<temp & \"0.5\">", values: &v }], None).unwrap();
        assert!(svg.contains("kv&lt;temp &amp; &quot;0.5&quot;&gt;"));
        assert!(!svg.contains("kv<temp"));
        let svg = bars_svg("a < b", "ms & more", &[("x&y", 1.0)]).unwrap();
        assert!(svg.contains("a &lt; b") && svg.contains("ms &amp; more") && svg.contains("x&amp;y"));
    }

    #[test]
    fn log_axis_refuses_values_it_cannot_place() {
        let v = [10.0, 0.0];
        assert_eq!(
            ttft_cdf_svg(&[Series { name: "kv", values: &v }], None),
            Err(PlotError::NotPositive { series: "kv".into(), value: 0.0 })
        );
        let nan = [f64::NAN];
        let floor = Some(Series { name: "floor", values: &nan });
        assert!(matches!(ttft_cdf_svg(&[], floor), Err(PlotError::NotPositive { .. })));
    }

    #[test]
    fn empty_series_still_draw_a_chart() {
        let svg = ttft_cdf_svg(&[Series { name: "none", values: &[] }], None).unwrap();
        is_svg_document(&svg);
        is_svg_document(&bars_svg("nothing", "ms", &[]).unwrap());
    }

    #[test]
    fn bar_chart_has_a_bar_a_name_and_a_value_per_entry() {
        let bars = [("kv", 0.2596), ("round_robin", 0.0712), ("random", 0.0)];
        let svg = bars_svg("prefix reuse", "ratio", &bars).unwrap();
        is_svg_document(&svg);
        for (i, (name, value)) in bars.iter().enumerate() {
            let c = COLOURS[i];
            let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            assert_eq!(svg.lines().filter(|l| l.starts_with("<rect") && l.contains(&fill)).count(), 1, "{name}");
            assert!(svg.contains(&format!(">\n{name}\n</text>")), "{name}");
            assert!(svg.contains(&format!(">\n{}\n</text>", format_number(*value))), "{value}");
        }
        assert!(svg.contains("prefix reuse") && svg.contains("ratio"));
    }

    #[test]
    fn bars_refuse_negative_and_non_finite_values() {
        assert_eq!(bars_svg("t", "ms", &[("kv", -1.0)]), Err(PlotError::BadBar { name: "kv".into(), value: -1.0 }));
        assert!(bars_svg("t", "ms", &[("kv", f64::INFINITY)]).is_err());
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let v = [12.0, 40.0, 95.0, 1_300.0];
        let series = [Series { name: "kv", values: &v }];
        assert_eq!(ttft_cdf_svg(&series, None).unwrap(), ttft_cdf_svg(&series, None).unwrap());
    }

    #[test]
    fn log_axis_is_labelled_at_one_two_five() {
        assert_eq!(one_two_five(13.0, 3_250.0), [20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0]);
        assert_eq!(one_two_five(1.0, 10.0), [1.0, 2.0, 5.0, 10.0]);
    }

    #[test]
    fn numbers_get_the_decimals_their_size_needs() {
        assert_eq!(format_number(1_234.4), "1234");
        assert_eq!(format_number(56.74), "56.7");
        assert_eq!(format_number(0.2596), "0.260");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(axis_label(20.0), "20");
        assert_eq!(axis_label(0.35000000000000003), "0.35");
        assert_eq!(axis_label(0.0), "0");
    }
}
