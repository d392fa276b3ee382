//! Charts with plotters, rendered with a font compiled into the binary (no system fonts):
//! training curves from metrics.csv and the per-image GED histogram.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::fsio;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, epaint_default_fonts::UBUNTU_LIGHT);
    });
}

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let finite = values.filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    (lo - pad, hi + pad)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing chart: {e:?}")
}

/// One chart of a figure: a title and named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Up to four panels in a 2x2 figure, x counted in epochs (a run's curves:
/// `train::history::curve_panels`). Non-finite points are left out.
pub fn training_curves(panels: &[Panel], path: &Path) -> Result<()> {
    register_font();
    let x_max = panels.iter().flat_map(|p| p.series.iter().flat_map(|(_, pts)| pts.iter().map(|q| q.0))).fold(1.0f64, f64::max) + 0.5;
    if panels.iter().all(|p| p.series.iter().all(|(_, pts)| pts.is_empty())) {
        anyhow::bail!("no epochs in metrics.csv yet");
    }
    fsio::write_atomic_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, (1200, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let areas = root.split_evenly((2, 2));
        for (area, panel) in areas.iter().zip(panels) {
            let all = panel.series.iter().flat_map(|(_, pts)| pts.iter().map(|q| q.1));
            let (lo, hi) = range(all.collect::<Vec<_>>().into_iter());
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 22))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.5..x_max, lo..hi)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .draw()
                .map_err(err)?;
            for (k, (name, pts)) in panel.series.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(_, v)| v.is_finite()).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    })
}

/// Histogram of per-image GED.
pub fn ged_histogram(values: &[f64], path: &Path) -> Result<()> {
    register_font();
    fsio::write_atomic_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let bins = 20usize;
        let hi = values.iter().copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(1e-3);
        let width = hi / bins as f64;
        let mut counts = vec![0u32; bins];
        for &v in values.iter().filter(|v| v.is_finite()) {
            counts[((v / width) as usize).min(bins - 1)] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(1).max(1);
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("per-image GED (n = {}, mean {mean:.4})", values.len()), (FONT, 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..hi, 0u32..top + 1)
            .map_err(err)?;
        chart.configure_mesh().x_desc("GED").y_desc("images").label_style((FONT, 14)).axis_desc_style((FONT, 15)).draw().map_err(err)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = i as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    })
}
