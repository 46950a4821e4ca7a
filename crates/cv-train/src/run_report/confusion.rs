//! The confusion matrix as an SVG heatmap: rows are true classes, columns predicted ones,
//! each cell coloured by its share of the row (so rare classes read as well as common ones)
//! and labelled with its count while cells are large enough to hold it. Every cell has a
//! `<title>` (the browser's tooltip) naming both classes, so large matrices stay readable.
//! Written by hand rather than with plotters: plotters has no matrix chart with a
//! categorical axis per side and per-cell tooltips, and the SVG is a few dozen lines.

use std::fmt::Write;

use html_escape::encode_text;

/// The matrix's side in pixels, whatever the class count (within the cell limits below).
const MATRIX_PX: f64 = 560.0;
/// Cell size limits.
const CELL_MIN: f64 = 4.0;
const CELL_MAX: f64 = 44.0;
/// Cells at least this large print their count.
const COUNT_MIN_CELL: f64 = 18.0;
/// Cells at least this large get class names along the axes.
const LABEL_MIN_CELL: f64 = 9.0;
/// Longest class name drawn in full on an axis (the tooltip has the whole name).
const LABEL_CHARS: usize = 22;

/// The colour of a share in [0, 1]: white to dark blue (matplotlib's "Blues" end points).
pub(super) fn share_colour(share: f64) -> String {
    let s = share.clamp(0.0, 1.0);
    let mix = |lo: f64, hi: f64| (lo + (hi - lo) * s).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(247.0, 8.0),
        mix(251.0, 48.0),
        mix(255.0, 107.0)
    )
}

fn short(name: &str) -> String {
    if name.chars().count() <= LABEL_CHARS {
        name.to_string()
    } else {
        let cut: String = name.chars().take(LABEL_CHARS - 1).collect();
        format!("{cut}\u{2026}")
    }
}

/// Geometry of the figure.
struct Layout {
    cell: f64,
    left: f64,
    top: f64,
    labels: bool,
}

impl Layout {
    fn new(n: usize, classes: &[String]) -> Self {
        let cell = (MATRIX_PX / n.max(1) as f64).clamp(CELL_MIN, CELL_MAX);
        let labels = cell >= LABEL_MIN_CELL;
        let longest = classes
            .iter()
            .map(|c| short(c).chars().count())
            .max()
            .unwrap_or(1);
        let label_px = if labels { 7.0 * longest as f64 } else { 0.0 };
        Layout {
            cell,
            left: 40.0 + label_px,
            top: 40.0,
            labels,
        }
    }
}

/// The heatmap of `confusion[true][predicted]` with `classes` as names (indices where a
/// name is missing).
pub(super) fn heatmap_svg(confusion: &[Vec<u64>], classes: &[String]) -> String {
    let n = confusion.len();
    let names: Vec<String> = (0..n)
        .map(|c| classes.get(c).cloned().unwrap_or_else(|| c.to_string()))
        .collect();
    let l = Layout::new(n, &names);
    let side = l.cell * n as f64;
    let label_px = l.left - 40.0;
    let width = l.left + side + 120.0;
    let height = l.top + side + label_px * 0.75 + 50.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" role="img" aria-label="confusion matrix">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="20" font-size="15" text-anchor="middle">Confusion matrix: rows true class, colour = share of the row</text>"#,
        l.left + side / 2.0
    );
    for (t, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            cell(&mut svg, &l, (t, p), count, total, (&names[t], &names[p]));
        }
    }
    axes(&mut svg, &l, &names, side);
    scale(&mut svg, l.left + side + 30.0, l.top, side.max(120.0));
    svg.push_str("</svg>");
    svg
}

fn cell(
    svg: &mut String,
    l: &Layout,
    (t, p): (usize, usize),
    count: u64,
    total: u64,
    (true_name, predicted_name): (&str, &str),
) {
    let share = if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    };
    let (x, y) = (l.left + p as f64 * l.cell, l.top + t as f64 * l.cell);
    let _ = write!(
        svg,
        r#"<rect x="{x:.1}" y="{y:.1}" width="{c:.1}" height="{c:.1}" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"><title>true {tn}, predicted {pn}: {count} of {total} ({pct:.1}%)</title></rect>"#,
        c = l.cell,
        fill = share_colour(share),
        stroke = if t == p { "#d62728" } else { "#ffffff" },
        sw = if t == p && l.cell >= COUNT_MIN_CELL {
            1.5
        } else {
            0.5
        },
        tn = encode_text(true_name),
        pn = encode_text(predicted_name),
        pct = 100.0 * share,
    );
    if l.cell >= COUNT_MIN_CELL && count > 0 {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="{:.0}" text-anchor="middle" dominant-baseline="central" fill="{}">{count}</text>"#,
            x + l.cell / 2.0,
            y + l.cell / 2.0,
            (l.cell * 0.32).clamp(9.0, 13.0),
            if share > 0.5 { "#ffffff" } else { "#000000" },
        );
    }
}

/// Class names along both sides (when the cells can hold them) and the axis titles.
fn axes(svg: &mut String, l: &Layout, names: &[String], side: f64) {
    let font = (l.cell * 0.8).min(12.0);
    if l.labels {
        for (i, name) in names.iter().enumerate() {
            let mid = i as f64 * l.cell + l.cell / 2.0;
            let text = encode_text(&short(name)).into_owned();
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="{font:.0}" text-anchor="end" dominant-baseline="central">{text}</text>"#,
                l.left - 6.0,
                l.top + mid,
            );
            let (x, y) = (l.left + mid, l.top + side + 8.0);
            let _ = write!(
                svg,
                r#"<text x="{x:.1}" y="{y:.1}" font-size="{font:.0}" text-anchor="end" transform="rotate(-45 {x:.1} {y:.1})">{text}</text>"#,
            );
        }
    }
    let below = l.top + side + (l.left - 40.0) * 0.75 + 35.0;
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{below:.1}" font-size="13" text-anchor="middle">predicted class</text>"#,
        l.left + side / 2.0
    );
    let mid = l.top + side / 2.0;
    let _ = write!(
        svg,
        r#"<text x="14" y="{mid:.1}" font-size="13" text-anchor="middle" transform="rotate(-90 14 {mid:.1})">true class</text>"#,
    );
}

/// The colour scale: a vertical bar from 0% (bottom) to 100% (top) with ticks.
fn scale(svg: &mut String, x: f64, top: f64, height: f64) {
    let steps = 20;
    let h = height / steps as f64;
    for i in 0..steps {
        let share = 1.0 - (i as f64 + 0.5) / steps as f64;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="16" height="{:.2}" fill="{}"/>"#,
            top + i as f64 * h,
            h + 0.3,
            share_colour(share)
        );
    }
    for (share, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let y = top + (1.0 - share) * height;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="black"/><text x="{:.1}" y="{y:.1}" font-size="11" dominant-baseline="central">{label}</text>"#,
            x + 16.0,
            x + 20.0,
            x + 23.0
        );
    }
    let (lx, ly) = (x + 62.0, top + height / 2.0);
    let _ = write!(
        svg,
        r#"<text x="{lx:.1}" y="{ly:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">share of the true class</text>"#,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_counts_names_and_tooltips() {
        let classes = vec!["cat".to_string(), "dog & <wolf>".to_string()];
        let svg = heatmap_svg(&[vec![3, 1], vec![0, 4]], &classes);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 4 + 20);
        assert!(svg.contains("true cat, predicted dog &amp; &lt;wolf&gt;: 1 of 4 (25.0%)"));
        assert!(svg.contains(">3</text>") && svg.contains(">4</text>"));
        assert!(!svg.contains("<wolf>"));
        assert!(svg.contains("predicted class") && svg.contains("true class"));
        // The full diagonal cell of "dog" is the darkest colour.
        assert!(svg.contains(&format!(r#"fill="{}""#, share_colour(1.0))));
    }

    #[test]
    fn many_classes_drop_counts_and_names_but_keep_tooltips() {
        let n = 200;
        let classes: Vec<String> = (0..n).map(|c| format!("class{c}")).collect();
        let confusion: Vec<Vec<u64>> = (0..n)
            .map(|t| (0..n).map(|p| u64::from(t == p)).collect())
            .collect();
        let svg = heatmap_svg(&confusion, &classes);
        assert!(svg.contains("<title>true class199, predicted class199: 1 of 1 (100.0%)</title>"));
        assert!(!svg.contains(">class199</text>"));
    }

    #[test]
    fn colour_runs_white_to_blue() {
        assert_eq!(share_colour(0.0), "#f7fbff");
        assert_eq!(share_colour(1.0), "#08306b");
        assert_eq!(share_colour(7.0), "#08306b");
    }
}
