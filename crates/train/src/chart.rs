//! Loss charts as SVG (plotters, no system libraries): train loss and eval loss above, the
//! learning rate below, against steps, read back from runs' metrics.jsonl. A run redraws its
//! `<output.dir>/loss.svg` at each save and at the end; `shard-train plot` draws several runs
//! on one chart.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;

/// One run's curves: (step, value) points.
pub struct Curves {
    pub label: String,
    pub train_loss: Vec<(f64, f64)>,
    pub eval_loss: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
}

impl Curves {
    /// The curves of the run in `dir`, from its metrics.jsonl; labelled with the directory's name.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (is {} a run's output.dir?)", path.display(), dir.display()))?;
        let label = dir.canonicalize().unwrap_or(dir.to_owned()).file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
        let mut curves = Curves { label, train_loss: Vec::new(), eval_loss: Vec::new(), lr: Vec::new() };
        for (i, line) in text.lines().enumerate() {
            let m: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
            let Some(step) = m["step"].as_f64() else { bail!("{} line {}: no \"step\"", path.display(), i + 1) };
            let push = |points: &mut Vec<(f64, f64)>, key: &str| {
                if let Some(value) = m[key].as_f64().filter(|v| v.is_finite()) {
                    points.push((step, value));
                }
            };
            push(&mut curves.train_loss, "loss");
            push(&mut curves.eval_loss, "eval_loss");
            push(&mut curves.lr, "lr");
        }
        for points in [&mut curves.train_loss, &mut curves.eval_loss, &mut curves.lr] {
            keep_the_last_line_of_each_step(points);
        }
        Ok(curves)
    }
}

/// A run resumed from an earlier save appends the steps it repeats after those of the
/// continuation it abandoned (metrics.rs): the last point of a step is the run's own, in step order.
fn keep_the_last_line_of_each_step(points: &mut Vec<(f64, f64)>) {
    let mut by_step = std::collections::BTreeMap::new();
    for &(step, value) in points.iter() {
        by_step.insert(step as u64, (step, value));
    }
    *points = by_step.into_values().collect();
}

/// Redraws `<dir>/loss.svg` from `<dir>/metrics.jsonl`; nothing is drawn before the run has a
/// loss to show (every step so far skipped as non-finite).
pub fn draw_run(dir: &Path) -> Result<()> {
    let curves = Curves::read(dir)?;
    if curves.train_loss.is_empty() && curves.eval_loss.is_empty() {
        return Ok(());
    }
    draw(&[curves], &dir.join("loss.svg"))
}

/// Draws `runs` on one chart into the SVG file `path`.
pub fn draw(runs: &[Curves], path: &Path) -> Result<()> {
    let losses: Vec<(f64, f64)> = runs.iter().flat_map(|c| c.train_loss.iter().chain(&c.eval_loss)).copied().collect();
    if losses.is_empty() {
        bail!("no steps to draw yet");
    }
    let steps = span(losses.iter().map(|p| p.0), 0.0);
    let lrs = span(runs.iter().flat_map(|c| &c.lr).map(|p| p.1), 0.05);
    let plot_err = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e}", path.display());

    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(440);

    let mut loss_chart = ChartBuilder::on(&top)
        .caption("loss", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(steps.clone(), span(losses.iter().map(|p| p.1), 0.05))
        .map_err(plot_err)?;
    loss_chart.configure_mesh().x_desc("step").x_labels(step_labels(&steps)).x_label_formatter(&step_label).draw().map_err(plot_err)?;
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let name = |what: &str| if runs.len() == 1 { what.to_owned() } else { format!("{} {what}", run.label) };
        loss_chart
            .draw_series(LineSeries::new(run.train_loss.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name("train"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if !run.eval_loss.is_empty() {
            let eval_color = color.mix(0.6);
            loss_chart
                .draw_series(LineSeries::new(run.eval_loss.iter().copied(), eval_color.stroke_width(2)).point_size(4))
                .map_err(plot_err)?
                .label(name("eval"))
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, eval_color.filled()));
        }
    }
    loss_chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_err)?;

    let mut lr_chart = ChartBuilder::on(&bottom)
        .caption("learning rate", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(steps.clone(), lrs)
        .map_err(plot_err)?;
    lr_chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(step_labels(&steps))
        .x_label_formatter(&step_label)
        .y_label_formatter(&|lr| format!("{lr:.1e}"))
        .draw()
        .map_err(plot_err)?;
    for (i, run) in runs.iter().enumerate() {
        lr_chart.draw_series(LineSeries::new(run.lr.iter().copied(), Palette99::pick(i).stroke_width(2))).map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Steps are whole numbers.
fn step_label(step: &f64) -> String {
    format!("{step:.0}")
}

/// At most one label per step (more would put several labels on one step), and at most 10.
fn step_labels(steps: &Range<f64>) -> usize {
    ((steps.end - steps.start).floor() as usize + 1).clamp(2, 10)
}

/// min..max of `values`, widened by `pad` of its width on each side; never empty.
fn span(values: impl Iterator<Item = f64>, pad: f64) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let width = hi - lo;
    if width > 0.0 {
        lo - pad * width..hi + pad * width
    } else {
        // One value (a constant learning rate, a single step): a tenth of it each side.
        let half = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo - half..hi + half
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_value_gets_a_range_around_it_not_around_zero() {
        let lr = span([1e-4, 1e-4].into_iter(), 0.05);
        assert!(lr.start > 0.0 && lr.end < 2e-4 && lr.contains(&1e-4), "{lr:?}");
        assert_eq!(span(std::iter::once(0.0), 0.05), -1.0..1.0);
    }

    #[test]
    fn a_repeated_step_is_drawn_from_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step: u64, loss: f64| format!("{{\"step\": {step}, \"loss\": {loss}, \"lr\": 0.1}}\n");
        let metrics = [line(1, 5.0), line(2, 4.0), line(3, 3.0), line(2, 4.5), line(3, 3.5)].concat();
        std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
        let curves = Curves::read(dir.path()).unwrap();
        assert_eq!(curves.train_loss, vec![(1.0, 5.0), (2.0, 4.5), (3.0, 3.5)]);
        assert_eq!(curves.lr.len(), 3);
    }

    #[test]
    fn steps_get_at_most_one_label_each() {
        assert_eq!(step_labels(&(1.0..6.0)), 6);
        assert_eq!(step_labels(&(1.0..1000.0)), 10);
    }
}
