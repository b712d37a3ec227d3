//! The training-curve PNG: train (blue) and validation (red) bits/dim against steps.
use plotters::prelude::*;
use std::path::Path;

pub fn draw(history: &[(i64, f64, Option<f64>)], path: &Path) -> Result<(), String> {
    let train: Vec<(f64, f64)> = history.iter().map(|h| (h.0 as f64, h.1)).filter(|p| p.1.is_finite()).collect();
    let val: Vec<(f64, f64)> = history.iter().filter_map(|h| h.2.map(|v| (h.0 as f64, v))).collect();
    if train.is_empty() {
        return Ok(());
    }
    let all = train.iter().chain(&val);
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (_, y) in all {
        lo = lo.min(*y);
        hi = hi.max(*y);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let max_step = train.iter().chain(&val).map(|p| p.0).fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // No text: plotters' font support needs system fonts a fresh machine may lack; the axes' ranges are in the
    // metrics log beside this file.
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(0)
        .y_label_area_size(0)
        .build_cartesian_2d(0.0..max_step, (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().disable_x_mesh().y_labels(10).draw().map_err(|e| e.to_string())?;
    chart.draw_series(LineSeries::new(train, BLUE.stroke_width(2))).map_err(|e| e.to_string())?;
    if !val.is_empty() {
        chart.draw_series(LineSeries::new(val, RED.stroke_width(2))).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
