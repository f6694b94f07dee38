//! Loss charts as SVG (plotters, no system libraries): train loss and eval loss above, the
//! learning rate below, against steps (or tokens, or time), read back from runs' metrics.jsonl.
//! A run redraws its `<output.dir>/loss.svg` at each save and at the end; `shard-train plot`
//! draws several runs on one chart.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// Okabe and Ito's colour-blind-safe palette, without its yellow (too faint on white).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
    RGBColor(0x00, 0x00, 0x00), // black
];

/// What the horizontal axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XAxis {
    #[default]
    Steps,
    /// Input tokens trained on so far (runs with other batch sizes line up by data seen).
    Tokens,
    /// Seconds of training so far (the sum of the steps' times).
    Time,
}

impl XAxis {
    fn name(self) -> &'static str {
        match self {
            XAxis::Steps => "step",
            XAxis::Tokens => "tokens",
            XAxis::Time => "time",
        }
    }

    fn label(self, x: f64) -> String {
        match self {
            XAxis::Steps => format!("{x:.0}"),
            XAxis::Tokens if x >= 1e6 => format!("{:.1}M", x / 1e6),
            XAxis::Tokens if x >= 1e3 => format!("{:.1}k", x / 1e3),
            XAxis::Tokens => format!("{x:.0}"),
            XAxis::Time if x >= 120.0 => format!("{:.1} min", x / 60.0),
            XAxis::Time => format!("{x:.0} s"),
        }
    }
}

/// How to draw a chart.
#[derive(Debug, Clone, Default)]
pub struct ChartOptions {
    pub x: XAxis,
    /// A log-scale loss axis: `Some(true)` always, `Some(false)` never, `None` when the losses
    /// span a decade or more.
    pub log_y: Option<bool>,
}

/// One run's curves: (x, value) points.
pub struct Curves {
    pub label: String,
    pub train_loss: Vec<(f64, f64)>,
    pub eval_loss: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
}

impl Curves {
    /// The curves of the run in `dir`, from its metrics.jsonl, against `x`; labelled with the
    /// directory's name.
    pub fn read(dir: &Path, x: XAxis) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (is {} a run's output.dir?)", path.display(), dir.display()))?;
        let label = dir.canonicalize().unwrap_or(dir.to_owned()).file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
        let mut curves = Curves { label, train_loss: Vec::new(), eval_loss: Vec::new(), lr: Vec::new() };
        let (mut tokens, mut seconds) = (0.0, 0.0);
        for (i, m) in run_history(&path, &text)? {
            let field = |key: &str| m[key].as_f64().with_context(|| format!("{} line {}: no \"{key}\"", path.display(), i + 1));
            let step = field("step")?;
            tokens += field("tokens").unwrap_or(0.0);
            seconds += field("seconds").unwrap_or(0.0);
            let at = match x {
                XAxis::Steps => step,
                XAxis::Tokens => tokens,
                XAxis::Time => seconds,
            };
            let push = |points: &mut Vec<(f64, f64)>, key: &str| {
                if let Some(value) = m[key].as_f64().filter(|v| v.is_finite()) {
                    points.push((at, value));
                }
            };
            push(&mut curves.train_loss, "loss");
            push(&mut curves.eval_loss, "eval_loss");
            push(&mut curves.lr, "lr");
        }
        Ok(curves)
    }
}

/// The lines of metrics.jsonl (`text`, read from `path`) that make the run's history, with their
/// line index. A run resumed from an earlier save appends the steps it repeats after those of the
/// continuation it abandoned (metrics.rs): a line of step s drops the lines before it of step s
/// and later.
fn run_history(path: &Path, text: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    let mut history: Vec<(usize, serde_json::Value)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let m: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let step = m["step"].as_f64().with_context(|| format!("{} line {}: no \"step\"", path.display(), i + 1))?;
        history.retain(|(_, earlier)| earlier["step"].as_f64().is_some_and(|s| s < step));
        history.push((i, m));
    }
    Ok(history)
}

/// Redraws `<dir>/loss.svg` from `<dir>/metrics.jsonl`, titled with the run's name; nothing is
/// drawn before the run has a loss to show (every step so far skipped as non-finite).
pub fn draw_run(dir: &Path) -> Result<()> {
    let curves = Curves::read(dir, XAxis::Steps)?;
    if curves.train_loss.is_empty() && curves.eval_loss.is_empty() {
        return Ok(());
    }
    draw(&[curves], &dir.join("loss.svg"), &ChartOptions::default())
}

/// Draws `runs` on one chart into the SVG file `path`.
pub fn draw(runs: &[Curves], path: &Path, options: &ChartOptions) -> Result<()> {
    let losses: Vec<(f64, f64)> = runs.iter().flat_map(|c| c.train_loss.iter().chain(&c.eval_loss)).copied().collect();
    if losses.is_empty() {
        bail!("no steps to draw yet");
    }
    let xs = span(losses.iter().map(|p| p.0), 0.0);
    let plot_err = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw {}: {e}", path.display());

    let root = SVGBackend::new(path, (960, 660)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let names: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    let root = root.titled(&format!("loss: {}", names.join(" vs ")), ("sans-serif", 22)).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(440);

    let (lo, hi) = min_max(losses.iter().map(|p| p.1));
    let log_y = options.log_y.unwrap_or(lo > 0.0 && hi >= 10.0 * lo);
    if log_y && lo <= 0.0 {
        bail!("a log-scale loss axis needs positive losses, and the smallest is {lo}");
    }
    let drawn = if log_y {
        draw_losses(&top, runs, options.x, &xs, (lo / 1.1..hi * 1.1).log_scale())
    } else {
        draw_losses(&top, runs, options.x, &xs, span(losses.iter().map(|p| p.1), 0.05))
    };
    drawn.map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;

    let lrs = span(runs.iter().flat_map(|c| &c.lr).map(|p| p.1), 0.05);
    const LR_LABELS: usize = 5;
    let digits = lr_digits(&lrs, LR_LABELS);
    let mut lr_chart = ChartBuilder::on(&bottom)
        .caption("learning rate", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.clone(), lrs)
        .map_err(plot_err)?;
    lr_chart
        .configure_mesh()
        .x_desc(options.x.name())
        .x_labels(x_labels(options.x, &xs))
        .x_label_formatter(&|x| options.x.label(*x))
        .y_labels(LR_LABELS)
        .y_label_formatter(&|lr| format!("{lr:.digits$e}"))
        .draw()
        .map_err(plot_err)?;
    for (i, run) in runs.iter().enumerate() {
        lr_chart.draw_series(LineSeries::new(run.lr.iter().copied(), train_color(runs.len(), i).stroke_width(2))).map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The loss panel on `area`, with the loss axis `y` (linear or log).
fn draw_losses<Y>(area: &DrawingArea<SVGBackend, Shift>, runs: &[Curves], x: XAxis, xs: &Range<f64>, y: Y) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart =
        ChartBuilder::on(area).margin(12).x_label_area_size(30).y_label_area_size(60).build_cartesian_2d(xs.clone(), y).map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x.name())
        .y_desc("loss")
        .x_labels(x_labels(x, xs))
        .x_label_formatter(&|v| x.label(*v))
        .y_label_formatter(&|v| three_digits(*v))
        .draw()
        .map_err(err)?;
    for (i, run) in runs.iter().enumerate() {
        let name = |what: &str| if runs.len() == 1 { what.to_owned() } else { format!("{} {what}", run.label) };
        let train = train_color(runs.len(), i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(run.train_loss.iter().copied(), train))
            .map_err(err)?
            .label(name("train"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], train));
        if !run.eval_loss.is_empty() {
            // Eval: its own colour for one run; for several, the run's colour dashed. Filled
            // points on the chart and in the legend alike.
            let eval = eval_color(runs.len(), i);
            let line = eval.stroke_width(2);
            let points = run.eval_loss.iter().copied();
            if runs.len() == 1 {
                chart.draw_series(LineSeries::new(points.clone(), line)).map_err(err)?;
            } else {
                chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, line)).map_err(err)?;
            }
            chart.draw_series(points.map(|p| Circle::new(p, 4, eval.filled()))).map_err(err)?.label(name("eval")).legend(move |(x, y)| {
                EmptyElement::at((x, y)) + PathElement::new([(0, 0), (20, 0)], line) + Circle::new((10, 0), 4, eval.filled())
            });
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
    Ok(())
}

/// Run `i`'s train colour: one run is blue; several get a colour each.
fn train_color(runs: usize, i: usize) -> RGBColor {
    if runs == 1 { PALETTE[0] } else { PALETTE[i % PALETTE.len()] }
}

/// Run `i`'s eval colour: one run's eval is vermillion, against its blue train loss; with several
/// runs, the run's own colour (drawn dashed).
fn eval_color(runs: usize, i: usize) -> RGBColor {
    if runs == 1 { PALETTE[1] } else { train_color(runs, i) }
}

/// Labels on the horizontal axis: at most one per step (more would put several labels on one
/// step), and at most 10.
fn x_labels(x: XAxis, xs: &Range<f64>) -> usize {
    match x {
        XAxis::Steps => ((xs.end - xs.start).floor() as usize + 1).clamp(2, 10),
        XAxis::Tokens | XAxis::Time => 10,
    }
}

/// Digits after the point, in scientific notation, that tell `labels` evenly spaced labels over
/// `range` apart (a constant learning rate spans a tenth of itself: 1.0e-4 four times otherwise).
fn lr_digits(range: &Range<f64>, labels: usize) -> usize {
    let gap = (range.end - range.start) / labels.max(2) as f64;
    let largest = range.start.abs().max(range.end.abs());
    if gap <= 0.0 || largest == 0.0 {
        return 1;
    }
    ((largest / gap).log10().ceil() as usize).clamp(1, 6)
}

/// `v` to three significant digits, without trailing zeros (a log axis's key points are sums of
/// floats: 0.6000000001 otherwise).
fn three_digits(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// min..max of `values`, widened by `pad` of its width on each side; never empty.
fn span(values: impl Iterator<Item = f64>, pad: f64) -> Range<f64> {
    let (lo, hi) = min_max(values);
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
    fn a_resumed_run_is_drawn_without_the_continuation_it_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step: u64, loss: f64| format!("{{\"step\": {step}, \"loss\": {loss}, \"lr\": 0.1, \"tokens\": 10}}\n");
        // Steps 1 to 4, then a resume from the save of step 1 that has run steps 2 and 3.
        let metrics = [line(1, 5.0), line(2, 4.0), line(3, 3.0), line(4, 2.0), line(2, 4.5), line(3, 3.5)].concat();
        std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
        let curves = Curves::read(dir.path(), XAxis::Steps).unwrap();
        assert_eq!(curves.train_loss, vec![(1.0, 5.0), (2.0, 4.5), (3.0, 3.5)]);
        let by_tokens = Curves::read(dir.path(), XAxis::Tokens).unwrap();
        assert_eq!(by_tokens.train_loss.iter().map(|p| p.0).collect::<Vec<_>>(), [10.0, 20.0, 30.0]);
    }

    #[test]
    fn steps_get_at_most_one_label_each() {
        assert_eq!(x_labels(XAxis::Steps, &(1.0..6.0)), 6);
        assert_eq!(x_labels(XAxis::Steps, &(1.0..1000.0)), 10);
    }

    #[test]
    fn learning_rate_labels_are_all_different() {
        for range in [span([1e-4].into_iter(), 0.05), span([2e-5, 2e-5].into_iter(), 0.05), 0.0..3e-4, 1e-5..1e-3] {
            let digits = lr_digits(&range, 5);
            let labels: Vec<String> =
                (0..5).map(|i| range.start + (range.end - range.start) * i as f64 / 4.0).map(|v| format!("{v:.digits$e}")).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "{range:?}");
        }
    }

    #[test]
    fn loss_labels_have_three_digits_at_most() {
        assert_eq!(three_digits(0.6000000001), "0.6");
        assert_eq!(three_digits(0.30000000004), "0.3");
        assert_eq!(three_digits(7.0), "7");
        assert_eq!(three_digits(2.345), "2.35");
        assert_eq!(three_digits(123.4), "123");
        assert_eq!(three_digits(0.01234), "0.0123");
    }

    #[test]
    fn tokens_and_time_read_as_running_sums() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            r#"{"step":1,"loss":4.0,"lr":0.1,"tokens":1000,"seconds":2.0}"#,
            r#"{"step":2,"loss":3.0,"eval_loss":3.5,"lr":0.1,"tokens":1000,"seconds":3.0}"#,
        ];
        std::fs::write(dir.path().join("metrics.jsonl"), rows.join("\n")).unwrap();
        let tokens = Curves::read(dir.path(), XAxis::Tokens).unwrap();
        assert_eq!(tokens.train_loss, [(1000.0, 4.0), (2000.0, 3.0)]);
        assert_eq!(tokens.eval_loss, [(2000.0, 3.5)]);
        assert_eq!(Curves::read(dir.path(), XAxis::Time).unwrap().train_loss, [(2.0, 4.0), (5.0, 3.0)]);
    }

    #[test]
    fn the_chart_is_titled_with_the_run_and_its_legend_matches_its_marks() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("my-run");
        std::fs::create_dir(&run).unwrap();
        let rows: Vec<String> = (1..=20)
            .map(|s| {
                format!(r#"{{"step":{s},"loss":{},"eval_loss":{},"lr":1e-4,"tokens":10,"seconds":1}}"#, 10.0 / s as f64, 11.0 / s as f64)
            })
            .collect();
        std::fs::write(run.join("metrics.jsonl"), rows.join("\n")).unwrap();
        draw_run(&run).unwrap();
        let svg = std::fs::read_to_string(run.join("loss.svg")).unwrap();
        assert!(svg.contains("loss: my-run"), "the title names the run");
        let (train, eval) = ("#0072B2", "#D55E00");
        assert!(svg.contains(train) && svg.contains(eval), "train and eval in distinct colours");
        let eval_circles: Vec<&str> = svg.lines().filter(|l| l.contains("<circle") && l.contains(eval)).collect();
        assert_eq!(eval_circles.len(), 20 + 1, "a point per eval, and one in the legend");
        assert!(eval_circles.iter().all(|c| c.contains(&format!(r#"fill="{eval}""#))), "filled on the chart as in the legend");
    }
}
