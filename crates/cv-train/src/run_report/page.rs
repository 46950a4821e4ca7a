//! The HTML around the figures: the summary, the per-class and most-confused tables, the
//! top-loss grid and the recipe. Text from outside the program (class names, paths, the
//! config) is escaped; the page has no script and refers to nothing outside itself.

use std::fmt::Write;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use serde_json::Value;

use super::confusion::share_colour;
use super::gallery::Tile;
use crate::checkpoint::{CheckpointConfig, InitRecord};
use crate::metrics::{ConfusedPair, EvalReport};
use crate::report::{curves_svg, EpochRecord};

/// Images narrower than this are shown enlarged with square pixels (CIFAR's 32x32).
const SMALL_IMAGE: u32 = 96;
/// Width at which every grid image is shown.
const SHOWN_PX: u32 = 128;

const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}\
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}\
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}.bar{height:12px;background:#4c78a8;display:inline-block}\
.grid{display:flex;flex-wrap:wrap;gap:14px}.tile{border:1px solid #ddd;padding:6px;font-size:12px;width:270px}\
.tile img{width:128px;height:auto;margin-right:4px}.tile img.small{image-rendering:pixelated}\
.wrong{color:#c0392b}.note{color:#666;font-size:13px}pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}\
svg{max-width:100%;height:auto}";

/// Everything the page shows.
pub(super) struct Page<'a> {
    pub title: &'a str,
    pub report: &'a EvalReport,
    pub classes: &'a [String],
    /// The curves figure (`None`: no epochs recorded).
    pub curves: Option<String>,
    pub confusion: String,
    pub confused: Vec<ConfusedPair>,
    pub tiles: Vec<Tile>,
    pub config: Option<&'a CheckpointConfig>,
}

/// The curves figure of `records`, as the run's `curves.svg` draws it.
pub(super) fn curves(records: &[EpochRecord]) -> Result<Option<String>, String> {
    if records.is_empty() {
        return Ok(None);
    }
    let svg = curves_svg(records).map_err(|e| format!("the curves: {e}"))?;
    // The SVG goes inline: drop any XML prologue before its root element.
    Ok(Some(svg[svg.find("<svg").unwrap_or(0)..].to_string()))
}

impl Page<'_> {
    fn name(&self, class: usize) -> String {
        self.classes
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string())
    }

    /// The whole document.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let title = text(self.title);
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>cv report: {title}</title><style>{STYLE}</style></head><body>\
             <h1>cv report: {title}</h1>"
        );
        self.summary(&mut h);
        self.curves_section(&mut h);
        let _ = write!(
            h,
            "<section id=\"confusion\"><h2>Confusion matrix</h2>{}</section>",
            self.confusion
        );
        self.per_class(&mut h);
        self.most_confused(&mut h);
        self.top_losses(&mut h);
        self.recipe(&mut h);
        h.push_str("</body></html>\n");
        h
    }

    fn summary(&self, h: &mut String) {
        let r = self.report;
        let _ = write!(
            h,
            "<p id=\"summary\">{} test images, {} classes: top-1 accuracy <b>{:.2}%</b>, \
             top-5 {:.2}%, mean loss {:.4}.</p>",
            r.images,
            self.classes.len(),
            100.0 * r.accuracy,
            100.0 * r.top5,
            r.loss
        );
    }

    fn curves_section(&self, h: &mut String) {
        h.push_str("<section id=\"curves\"><h2>Training curves</h2>");
        match &self.curves {
            Some(svg) => h.push_str(svg),
            None => h.push_str(
                "<p class=\"note\">No epochs recorded (no metrics.jsonl): nothing to plot.</p>",
            ),
        }
        h.push_str("</section>");
    }

    fn per_class(&self, h: &mut String) {
        h.push_str(
            "<section id=\"per-class\"><h2>Accuracy per class</h2><table>\
             <tr><th>class</th><th>accuracy</th><th></th><th>images</th></tr>",
        );
        for c in &self.report.per_class {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{:.2}%</td>\
                 <td><span class=\"bar\" style=\"width:{:.0}px\"></span></td><td class=\"num\">{}</td></tr>",
                text(&c.class),
                100.0 * c.accuracy,
                200.0 * c.accuracy,
                c.count
            );
        }
        h.push_str("</table></section>");
    }

    fn most_confused(&self, h: &mut String) {
        h.push_str("<section id=\"most-confused\"><h2>Most confused pairs</h2>");
        if self.confused.is_empty() {
            h.push_str("<p class=\"note\">No image was misclassified.</p></section>");
            return;
        }
        h.push_str(
            "<table><tr><th>true class</th><th>predicted as</th><th>images</th>\
             <th>share of the true class</th></tr>",
        );
        for p in &self.confused {
            let total: u64 = self.report.confusion[p.actual].iter().sum();
            let share = p.count as f64 / total.max(1) as f64;
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\" style=\"background:{}\">{:.1}%</td></tr>",
                text(&self.name(p.actual)),
                text(&self.name(p.predicted)),
                p.count,
                share_colour(share * 0.5),
                100.0 * share
            );
        }
        h.push_str("</table></section>");
    }

    fn top_losses(&self, h: &mut String) {
        h.push_str("<section id=\"top-losses\"><h2>Highest-loss test images</h2>");
        let Some(first) = self.tiles.first() else {
            h.push_str("<p class=\"note\">No test image.</p></section>");
            return;
        };
        let _ = write!(
            h,
            "<p class=\"note\">Each image as the model saw it (after the eval transforms), then \
             its Grad-CAM at <code>{}</code> for the predicted class: red is where the \
             prediction came from.</p><div class=\"grid\">",
            first.layer
        );
        for t in &self.tiles {
            self.tile(h, t);
        }
        h.push_str("</div></section>");
    }

    fn tile(&self, h: &mut String, t: &Tile) {
        let o = &t.outcome;
        let (actual, predicted) = (self.name(o.label as usize), self.name(o.predicted as usize));
        let class = if t.width < SMALL_IMAGE {
            " class=\"small\""
        } else {
            ""
        };
        let alt = attr(&format!("test image {}, true {actual}", o.index)).into_owned();
        let _ = write!(
            h,
            "<figure class=\"tile\"><img{class} width=\"{SHOWN_PX}\" src=\"{}\" alt=\"{alt}\">\
             <img{class} width=\"{SHOWN_PX}\" src=\"{}\" alt=\"Grad-CAM of {}\">\
             <figcaption>true <b>{}</b><br>predicted <b{}>{}</b> ({:.1}%)<br>loss {:.3} \
             &middot; test image #{}</figcaption></figure>",
            t.seen,
            t.overlay,
            attr(&predicted),
            text(&actual),
            if o.label != o.predicted {
                " class=\"wrong\""
            } else {
                ""
            },
            text(&predicted),
            100.0 * o.probability,
            o.loss,
            o.index
        );
    }

    fn recipe(&self, h: &mut String) {
        h.push_str("<section id=\"recipe\"><h2>Recipe</h2>");
        let Some(config) = self.config else {
            h.push_str("<p class=\"note\">No config.json: the recipe is unknown.</p></section>");
            return;
        };
        h.push_str("<table>");
        for (key, value) in recipe_rows(config) {
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td></tr>",
                text(&key),
                text(&value)
            );
        }
        let json = serde_json::to_string_pretty(config).unwrap_or_default();
        let _ = write!(
            h,
            "</table><details><summary>config.json</summary><pre>{}</pre></details></section>",
            text(&json)
        );
    }
}

/// The recipe as `(name, value)` rows: where the run started and what it trained on, then
/// every hyper-parameter of `train`.
fn recipe_rows(c: &CheckpointConfig) -> Vec<(String, String)> {
    let init = match &c.init {
        InitRecord::Scratch { seed } => format!("from scratch (seed {seed})"),
        InitRecord::Pretrained { origin, source, .. } => match source {
            Some(s) => format!("{origin} ({s})"),
            None => origin.clone(),
        },
    };
    let data = c.data.as_ref().map(|d| {
        let limits = match (d.limit_train, d.limit_test) {
            (None, None) => String::new(),
            (train, test) => format!(
                " (at most {} train / {} test images)",
                train.map_or("all".into(), |n| n.to_string()),
                test.map_or("all".into(), |n| n.to_string())
            ),
        };
        format!("{}{limits}", d.path.display())
    });
    let mut rows = vec![
        ("architecture".into(), c.card.architecture.to_string()),
        ("starting weights".into(), init),
        ("data".into(), data.unwrap_or_else(|| "in memory".into())),
        ("classes".into(), c.card.classes.join(", ")),
        (
            "arithmetic".into(),
            c.compute.clone().unwrap_or("f32".into()),
        ),
        ("epochs completed".into(), c.epochs_completed.to_string()),
        (
            "test accuracy".into(),
            c.test_accuracy
                .map_or("not evaluated".into(), |a| format!("{:.2}%", 100.0 * a)),
        ),
        (
            "train transforms".into(),
            compact(&serde_json::to_value(&c.train_transforms)),
        ),
        (
            "eval transforms".into(),
            compact(&serde_json::to_value(&c.card.eval_transforms)),
        ),
    ];
    if let Ok(Value::Object(train)) = serde_json::to_value(&c.train) {
        rows.extend(
            train
                .iter()
                .map(|(k, v)| (k.clone(), compact(&Ok(v.clone())))),
        );
    }
    rows
}

/// A JSON value as one line, strings without their quotes.
fn compact(v: &serde_json::Result<Value>) -> String {
    match v {
        Ok(Value::String(s)) => s.clone(),
        Ok(Value::Null) => "none".into(),
        Ok(other) => other.to_string(),
        Err(e) => format!("(cannot show: {e})"),
    }
}
