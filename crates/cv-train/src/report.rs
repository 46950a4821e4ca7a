//! What a run reports: `metrics.jsonl` (one object per epoch), `curves.png` and `curves.svg`
//! (loss and accuracy per epoch) and a progress bar per epoch.
//!
//! Both figures explain themselves: a title, axis titles, tick values and a legend per panel.
//! The SVG holds its text as `<text>` elements; the PNG's text is rasterised by plotters'
//! `ab_glyph` backend from a font bundled in the crate (`assets/`), so no system font is needed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressStyle};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::checkpoint::{CURVES_FILE, CURVES_SVG_FILE};
use crate::error::{Result, TrainError};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Base learning rate at the last step of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch (with label smoothing, as optimised).
    pub train_loss: f64,
    /// Training top-1 accuracy over the epoch (augmented images, train-mode BatchNorm).
    pub train_acc: f64,
    /// Test loss (`null` when the test split was not evaluated this epoch).
    pub test_loss: Option<f64>,
    /// Test top-1 accuracy.
    pub test_acc: Option<f64>,
    /// Test top-5 accuracy.
    pub test_top5: Option<f64>,
    /// Validation loss (absent without a validation split, or when not evaluated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy: what model selection uses when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    /// Wall-clock seconds of the epoch (training and evaluation).
    pub seconds: f64,
    /// Training throughput, images per second.
    pub images_per_s: f64,
}

/// Rewrites `metrics.jsonl` with every record (atomically, so a crash keeps the old file).
pub fn write_metrics(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        let line = serde_json::to_string(r).map_err(|error| TrainError::Json {
            path: path.to_path_buf(),
            error,
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    atomic::write_bytes(path, text.as_bytes())
}

/// Reads `metrics.jsonl` (missing file: no records).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochRecord>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|error| TrainError::Json {
                path: path.to_path_buf(),
                error,
            })?,
        );
    }
    Ok(out)
}

/// The font of every text in the plots: DejaVu Sans cut down to printable ASCII (see
/// `assets/README.md`), so PNGs get text without system fonts.
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
/// The family name the text styles ask for; [`FONT_BYTES`] is registered under it.
const FONT: &str = "sans-serif";

/// Pixel size of both images.
const SIZE: (u32, u32) = (1000, 500);
/// Height of the strip under each panel that holds its legend (two rows of entries).
const LEGEND_HEIGHT: u32 = 50;
/// Curves with more points than this are drawn without markers.
const MAX_MARKERS: usize = 60;

const TRAIN: RGBColor = RGBColor(220, 40, 40);
const TEST: RGBColor = RGBColor(30, 90, 220);
const TOP5: RGBColor = RGBColor(30, 160, 60);
const VAL: RGBColor = RGBColor(230, 140, 20);
const GRID_LIGHT: RGBColor = RGBColor(235, 235, 235);
const GRID_BOLD: RGBColor = RGBColor(200, 200, 200);

/// The shape marking each measured value, so series stay apart without colour too.
#[derive(Debug, Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Square,
    Diamond,
}

/// One curve: its legend label, colour, marker and `(epoch, value)` points.
struct Curve {
    label: &'static str,
    color: RGBColor,
    marker: Marker,
    points: Vec<(f64, f64)>,
}

/// Registers [`FONT_BYTES`] with plotters once per process; text layout fails without it.
fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the bundled font does not parse".to_string())
    }
}

/// Draws one marker at `at` (chart coordinates on a chart's plotting area, pixels on a
/// plain area).
fn draw_marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    marker: Marker,
    color: RGBColor,
) -> std::result::Result<(), String> {
    let style = color.filled();
    match marker {
        Marker::Circle => area.draw(&Circle::new(at, 4, style)),
        Marker::Triangle => area.draw(&TriangleMarker::new(at, 6, style)),
        Marker::Square => {
            area.draw(&(EmptyElement::at(at) + Rectangle::new([(-3, -3), (4, 4)], style)))
        }
        Marker::Diamond => area.draw(
            &(EmptyElement::at(at) + Polygon::new(vec![(0, -5), (5, 0), (0, 5), (-5, 0)], style)),
        ),
    }
    .map_err(|e| e.to_string())
}

/// The epoch axis: whole epochs from `first` to `last`, padded so edge markers stay whole.
struct EpochAxis {
    first: f64,
    last: f64,
    range: std::ops::Range<f64>,
    /// At most this many ticks; with `range` spanning `last - first + 1` whole numbers,
    /// plotters then picks a step of one epoch or more.
    ticks: usize,
}

impl EpochAxis {
    fn new(records: &[EpochRecord]) -> Self {
        let first = records.iter().map(|r| r.epoch).min().unwrap_or(1);
        let last = records
            .iter()
            .map(|r| r.epoch)
            .max()
            .unwrap_or(1)
            .max(first);
        let (first, last) = (first as f64, last as f64);
        let pad = (0.02 * (last - first)).max(0.5);
        EpochAxis {
            first,
            last,
            range: first - pad..last + pad,
            ticks: ((last - first) as usize + 1).min(10),
        }
    }

    /// Tick label: whole epochs inside the run; nothing for padding or fractional ticks.
    fn label(&self, v: f64) -> String {
        if (v - v.round()).abs() < 1e-9 && v >= self.first && v <= self.last {
            format!("{v:.0}")
        } else {
            String::new()
        }
    }
}

/// One panel: a chart with caption, axis titles and ticks, over a legend strip.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_title: &str,
    epochs: &EpochAxis,
    y_range: std::ops::Range<f64>,
    y_label: &dyn Fn(&f64) -> String,
    curves: &[Curve],
) -> std::result::Result<(), String> {
    let (chart_area, legend_area) =
        area.split_vertically(area.dim_in_pixel().1.saturating_sub(LEGEND_HEIGHT));
    let mut chart = ChartBuilder::on(&chart_area)
        .margin(10)
        .caption(caption, (FONT, 18))
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(epochs.range.clone(), y_range)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_title)
        .x_labels(epochs.ticks)
        .x_label_formatter(&|v| epochs.label(*v))
        .y_labels(6)
        .y_label_formatter(y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .draw()
        .map_err(|e| e.to_string())?;
    for curve in curves {
        chart
            .draw_series(LineSeries::new(
                curve.points.iter().copied(),
                curve.color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        // Markers show where values were measured (a single epoch is only a marker); past
        // `MAX_MARKERS` points they would merge into a thick band, and the line says it all.
        if curve.points.len() <= MAX_MARKERS {
            for &p in &curve.points {
                draw_marker(chart.plotting_area(), p, curve.marker, curve.color)?;
            }
        }
    }
    draw_legend(&legend_area, curves)
}

/// The legend: a line-and-marker sample and the label per curve, in centred rows that wrap
/// when the panel is too narrow for one.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    curves: &[Curve],
) -> std::result::Result<(), String> {
    const SAMPLE: i32 = 28; // length of the line sample
    const GAP: i32 = 6; // between sample and label
    const SPACING: i32 = 22; // between entries
    const ROW: i32 = 20; // row height
    let style = TextStyle::from((FONT, 14).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let width = area.dim_in_pixel().0 as i32;
    let mut rows: Vec<Vec<(&Curve, i32)>> = vec![Vec::new()];
    let mut row_width = 0;
    for curve in curves {
        let (text_w, _) = area
            .estimate_text_size(curve.label, &style)
            .map_err(|e| e.to_string())?;
        let entry = SAMPLE + GAP + text_w as i32;
        let needed = if row_width == 0 {
            entry
        } else {
            row_width + SPACING + entry
        };
        if needed > width - 20 && row_width > 0 {
            rows.push(Vec::new());
            row_width = entry;
        } else {
            row_width = needed;
        }
        if let Some(row) = rows.last_mut() {
            row.push((curve, entry));
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let total: i32 = row.iter().map(|e| e.1).sum::<i32>() + SPACING * (row.len() as i32 - 1);
        let y = ROW / 2 + 4 + ROW * i as i32;
        let mut x = (width - total) / 2;
        for (curve, entry) in row {
            area.draw(&PathElement::new(
                vec![(x, y), (x + SAMPLE, y)],
                curve.color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
            draw_marker(area, (x + SAMPLE / 2, y), curve.marker, curve.color)?;
            area.draw(&Text::new(
                curve.label,
                (x + SAMPLE + GAP, y),
                style.clone(),
            ))
            .map_err(|e| e.to_string())?;
            x += entry + SPACING;
        }
    }
    Ok(())
}

/// Draws the whole figure (title, loss panel, accuracy panel) on `root`.
fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    records: &[EpochRecord],
) -> std::result::Result<(), String> {
    register_font()?;
    let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v)))
            .collect()
    };
    let curve = |label, color, marker, f: &dyn Fn(&EpochRecord) -> Option<f64>| Curve {
        label,
        color,
        marker,
        points: series(f),
    };
    // Validation curves only for runs that have a validation split.
    let has_val = records.iter().any(|r| r.val_acc.is_some());
    let mut loss = vec![
        curve("train loss", TRAIN, Marker::Circle, &|r| Some(r.train_loss)),
        curve("test loss", TEST, Marker::Triangle, &|r| r.test_loss),
    ];
    let mut accuracy = vec![
        curve("train accuracy", TRAIN, Marker::Circle, &|r| {
            Some(r.train_acc)
        }),
        curve("test accuracy", TEST, Marker::Triangle, &|r| r.test_acc),
        curve("test top-5", TOP5, Marker::Square, &|r| r.test_top5),
    ];
    if has_val {
        loss.push(curve("val loss", VAL, Marker::Diamond, &|r| r.val_loss));
        accuracy.push(curve("val accuracy", VAL, Marker::Diamond, &|r| r.val_acc));
    }
    let epochs = EpochAxis::new(records);
    // Loss from 0 to a little over its largest value (1 when nothing finite was measured).
    let loss_max = loss
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        .filter(|m| *m > 0.0)
        .unwrap_or(1.0);

    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = records.len();
    let title = format!(
        "Training curves: {n} epoch{}",
        if n == 1 { "" } else { "s" }
    );
    let body = root.titled(&title, (FONT, 24)).map_err(|e| e.to_string())?;
    let (left, right) = body.split_horizontally(body.dim_in_pixel().0 / 2);
    draw_panel(
        &left,
        "Loss",
        "loss",
        &epochs,
        0.0..loss_max * 1.08,
        &|v| format!("{v:.2}"),
        &loss,
    )?;
    draw_panel(
        &right,
        "Accuracy",
        "accuracy",
        &epochs,
        0.0..1.02,
        &|v| format!("{v:.1}"),
        &accuracy,
    )?;
    root.present().map_err(|e| e.to_string())
}

fn plot_error(path: &Path) -> impl Fn(String) -> TrainError + '_ {
    move |message| TrainError::Plot {
        path: path.to_path_buf(),
        message,
    }
}

/// Draws `curves.png` (1000x500: title, loss and accuracy panels with axis titles, ticks and
/// legends) atomically.
pub fn plot_curves(path: &Path, records: &[EpochRecord]) -> Result<()> {
    // Drawn into a buffer and encoded with the workspace's `image`: plotters' own encoder
    // would pull in a second, older `image` and `png`.
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        draw_curves(&root, records).map_err(plot_error(path))?;
        root.present()
            .map_err(|e| plot_error(path)(e.to_string()))?;
    }
    atomic::write_with(path, |tmp| {
        image::save_buffer_with_format(
            tmp,
            &pixels,
            SIZE.0,
            SIZE.1,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|e| plot_error(path)(e.to_string()))
    })
}

/// Draws the same figure as [`plot_curves`] as `curves.svg` atomically: text as `<text>`
/// elements (searchable, sharp at any zoom).
pub fn plot_curves_svg(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let svg = curves_svg(records).map_err(plot_error(path))?;
    atomic::write_bytes(path, svg.as_bytes())
}

/// The figure of [`plot_curves_svg`] as an SVG document in memory (the run report inlines it).
pub fn curves_svg(records: &[EpochRecord]) -> std::result::Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw_curves(&root, records)?;
    }
    Ok(svg)
}

/// Writes both figures into the run folder `out`: [`CURVES_FILE`] and [`CURVES_SVG_FILE`].
pub fn write_curves(out: &Path, records: &[EpochRecord]) -> Result<()> {
    plot_curves(&out.join(CURVES_FILE), records)?;
    plot_curves_svg(&out.join(CURVES_SVG_FILE), records)
}

/// A progress bar for one epoch (hidden when `quiet`).
#[derive(Debug)]
pub struct EpochProgress {
    bar: ProgressBar,
}

impl EpochProgress {
    /// Starts a bar of `batches` steps labelled with the epoch.
    pub fn new(epoch: usize, epochs: usize, batches: usize, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(batches as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        };
        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        EpochProgress { bar }
    }

    /// Advances one batch and shows the running loss, accuracy and throughput.
    pub fn update(&self, loss: f64, accuracy: f64, images_per_s: f64) {
        self.bar.set_message(format!(
            "loss {loss:.4} acc {:.1}% {images_per_s:.0} img/s",
            100.0 * accuracy
        ));
        self.bar.inc(1);
    }

    /// Leaves the bar with the epoch's summary.
    pub fn finish(&self, summary: String) {
        self.bar.finish_with_message(summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, loss: f64, acc: f64, eval: bool) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.1,
            train_loss: loss,
            train_acc: acc,
            test_loss: eval.then_some(loss * 1.1),
            test_acc: eval.then_some(acc * 0.9),
            test_top5: eval.then_some(1.0),
            val_loss: None,
            val_acc: None,
            seconds: 1.5,
            images_per_s: 100.0,
        }
    }

    #[test]
    fn metrics_round_trip_one_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        assert!(read_metrics(&p).unwrap().is_empty());
        let records = vec![rec(1, 2.0, 0.2, true), rec(2, 1.0, 0.6, false)];
        write_metrics(&p, &records).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for key in [
            "epoch",
            "lr",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_acc",
            "test_top5",
            "seconds",
            "images_per_s",
        ] {
            assert!(first.get(key).is_some(), "{key} missing");
        }
        assert_eq!(read_metrics(&p).unwrap(), records);
    }

    /// Five epochs, the test split evaluated every epoch.
    fn five_epochs() -> Vec<EpochRecord> {
        (1..=5)
            .map(|e| rec(e, 2.0 / e as f64, 0.15 * e as f64, true))
            .collect()
    }

    /// The folder holds exactly `names`: no temporary file left behind.
    fn assert_only(dir: &Path, names: &[&str]) {
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, names);
    }

    /// The contents of the SVG's `<text>` elements, trimmed.
    fn svg_texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                t.split_once('>')
                    .and_then(|(_, rest)| rest.split_once("</text>"))
            })
            .map(|(text, _)| text.trim())
            .collect()
    }

    #[test]
    fn curves_svg_holds_title_axis_titles_ticks_and_legend_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CURVES_SVG_FILE);
        plot_curves_svg(&p, &five_epochs()).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        let texts = svg_texts(&svg);
        for expected in [
            "Training curves: 5 epochs",
            "Loss",
            "Accuracy",
            "epoch",
            "loss",
            "accuracy",
            "train loss",
            "test loss",
            "train accuracy",
            "test accuracy",
            "test top-5",
            // Epoch ticks (whole epochs only) and value ticks of both panels.
            "1",
            "3",
            "5",
            "0.0",
            "0.4",
            "1.0",
            "0.00",
        ] {
            assert!(texts.contains(&expected), "{expected:?} not in {texts:?}");
        }
        // No fractional or padding epochs among the ticks.
        assert!(!texts.contains(&"1.5") && !texts.contains(&"0.5") && !texts.contains(&"6"));
        // Both panels carry their own epoch axis title.
        assert_eq!(texts.iter().filter(|t| **t == "epoch").count(), 2);
        assert_only(dir.path(), &["curves.svg"]);
    }

    #[test]
    fn curves_png_has_the_colours_and_dark_text_in_the_title_band() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CURVES_FILE);
        plot_curves(&p, &five_epochs()).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        let has = |c: RGBColor| img.pixels().any(|px| px.0 == [c.0, c.1, c.2]);
        assert!(has(TRAIN) && has(TEST) && has(TOP5));
        // Nothing but the title is drawn in the top 30 rows; without a font they stay white.
        let dark = |x0: u32, y0: u32, x1: u32, y1: u32| {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
                .count()
        };
        assert!(dark(0, 0, SIZE.0, 30) > 200, "no title text");
        // The title is centred: its ink sits in the middle half.
        assert_eq!(dark(0, 0, SIZE.0 / 4, 30), 0);
        // The legend strips (bottom rows, below the x axis titles) hold label text too.
        assert!(
            dark(0, SIZE.1 - 40, SIZE.0 / 2, SIZE.1) > 100,
            "no loss legend"
        );
        assert!(
            dark(SIZE.0 / 2, SIZE.1 - 40, SIZE.0, SIZE.1) > 100,
            "no accuracy legend"
        );
        assert_only(dir.path(), &["curves.png"]);
    }

    #[test]
    fn write_curves_writes_both_formats_into_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        write_curves(dir.path(), &five_epochs()).unwrap();
        assert_only(dir.path(), &["curves.png", "curves.svg"]);
    }

    #[test]
    fn a_single_epoch_still_plots_with_markers() {
        let dir = tempfile::tempdir().unwrap();
        let records = [rec(1, 2.3, 0.1, true)];
        write_curves(dir.path(), &records).unwrap();
        let svg = std::fs::read_to_string(dir.path().join(CURVES_SVG_FILE)).unwrap();
        assert!(svg_texts(&svg).contains(&"Training curves: 1 epoch"));
        // Five markers at epoch 1 (two loss, three accuracy), each drawn in its colour.
        let img = image::open(dir.path().join(CURVES_FILE)).unwrap().to_rgb8();
        let count = |c: RGBColor| img.pixels().filter(|px| px.0 == [c.0, c.1, c.2]).count();
        // Legend samples alone draw a few dozen pixels per colour; the markers add more.
        assert!(count(TOP5) > 60, "{}", count(TOP5));
    }

    #[test]
    fn epochs_without_test_evaluation_and_nan_values_still_plot() {
        let dir = tempfile::tempdir().unwrap();
        let records = [
            rec(1, 2.0, 0.2, false),
            rec(2, 1.5, 0.4, true),
            rec(3, f64::NAN, 0.5, false),
        ];
        write_curves(dir.path(), &records).unwrap();
        write_curves(dir.path(), &[rec(1, f64::NAN, 0.1, false)]).unwrap();
        write_curves(dir.path(), &[]).unwrap();
        assert_only(dir.path(), &["curves.png", "curves.svg"]);
    }
}
