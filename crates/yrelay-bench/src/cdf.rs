//! Latency distributions as pictures: the points of a run's CDF (kept in its
//! JSON) and an SVG that draws several runs side by side, latency on a log
//! scale.

use std::path::PathBuf;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// The quantiles a CDF is drawn through: every percent, then the tail
/// finer (99.1 … 99.9 %, 99.99 %) and the maximum.
fn quantiles() -> impl Iterator<Item = f64> {
    let percents = (0..100).map(|p| p as f64 / 100.0);
    let tail = (1..10).map(|p| 0.99 + p as f64 / 1000.0);
    percents.chain(tail).chain([0.9999, 1.0])
}

/// `[latency ms, fraction of deliveries at or below it]` through the run's
/// histogram (µs).
pub(crate) fn points(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    quantiles()
        .map(|q| [h.value_at_quantile(q) as f64 / 1000.0, q])
        .collect()
}

#[derive(clap::Args)]
pub(crate) struct CdfArgs {
    /// Where to write the picture.
    #[arg(long)]
    svg: PathBuf,
    /// The picture's title.
    #[arg(long, default_value = "Latency")]
    title: String,
    /// NAME=FILE: a run's JSON (`fanout --json`), drawn as the line NAME.
    #[arg(required = true)]
    runs: Vec<String>,
}

/// `yrelay-bench cdf`: draws the CDFs kept in several runs' JSON in one
/// picture.
pub(crate) fn run(args: CdfArgs) -> Result<(), String> {
    let mut series = Vec::new();
    for run in &args.runs {
        let (name, file) = run
            .split_once('=')
            .ok_or_else(|| format!("{run:?}: expected NAME=FILE"))?;
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        let points = serde_json::from_value(json["latency_ms"]["cdf"].clone())
            .map_err(|e| format!("{file}: no latency_ms.cdf ({e})"))?;
        series.push((name.to_string(), points));
    }
    draw(&args.svg, &args.title, &series)
}

/// Draws each named series (`[ms, fraction]` points) as one line.
pub(crate) fn draw(
    path: &std::path::Path,
    title: &str,
    series: &[(String, Vec<[f64; 2]>)],
) -> Result<(), String> {
    let all = || series.iter().flat_map(|(_, p)| p.iter().map(|p| p[0]));
    // The axis spans the runs, to whole decades, never below 10 µs.
    let low = all().fold(f64::INFINITY, f64::min).max(0.01);
    let high = all().fold(0.0, f64::max).max(low * 10.0);
    let (low, high) = (decade_below(low), decade_above(high));
    let err = |e: DrawingAreaErrorKind<_>| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("fraction of deliveries")
        .x_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).stroke_width(2);
        let line = points.iter().map(|p| (p[0].max(low), p[1]));
        chart
            .draw_series(LineSeries::new(line, colour))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn decade_below(v: f64) -> f64 {
    10f64.powf(v.log10().floor())
}

fn decade_above(v: f64) -> f64 {
    10f64.powf(v.log10().ceil())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cdf_rises_to_every_delivery_and_draws() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
        for us in [300, 400, 500, 2_000, 90_000] {
            h.record(us).unwrap();
        }
        let points = points(&h);
        assert!(
            points
                .windows(2)
                .all(|w| w[0][0] <= w[1][0] && w[0][1] < w[1][1])
        );
        assert_eq!(points.last().unwrap()[1], 1.0);
        assert!((points.last().unwrap()[0] - 90.0).abs() < 0.1);
        let dir = std::env::temp_dir().join(format!("cdf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("a.svg");
        draw(&svg, "t", &[("a".into(), points)]).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("<polyline"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
