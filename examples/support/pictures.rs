//! Pictures as PNG files: training curves, confusion matrices and 2-D projections (PCA)
//! of embeddings, drawn with [plotters](https://docs.rs/plotters).
//!
//! Text is drawn with a system TrueType font (DejaVu Sans or Liberation Sans, looked up
//! in the usual folders, or the file named by `$PROTONET_FONT`); where none is found the
//! pictures are drawn without text. Every file is written to a temporary file and
//! renamed into place.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use protonet::io::write_atomic;
use protonet::record::HistoryPoint;
use protonet::{Error, Result};

const FONT_CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font with plotters once; true when text can be drawn.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let env = std::env::var("PROTONET_FONT").ok();
        for path in env.iter().map(String::as_str).chain(FONT_CANDIDATES) {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Distinct colours for classes (cycled).
fn class_colour(i: usize) -> RGBColor {
    const P: [(u8, u8, u8); 20] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (0, 0, 128),
        (128, 128, 0),
        (0, 128, 128),
        (128, 0, 0),
        (255, 215, 0),
        (0, 0, 0),
        (250, 128, 114),
        (60, 179, 113),
        (186, 85, 211),
        (70, 130, 180),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

/// `name` if it has at most `max` characters, else an ellipsis and its last characters
/// (class names often share a long prefix).
fn short_name(name: &str, max: usize) -> String {
    let n = name.chars().count();
    if n <= max {
        name.to_string()
    } else {
        std::iter::once('…').chain(name.chars().skip(n + 1 - max)).collect()
    }
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(format!("cannot draw the picture: {e}")))
}

/// Renders `draw` on a `w x h` RGB canvas and writes it to `path` as PNG, atomically.
fn render_png(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>, bool) -> std::result::Result<(), String>,
) -> Result<()> {
    let text = font_available();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        draw(root.clone(), text).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer has w*h*3 bytes");
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| plot_err(path, e))?;
    write_atomic(path, &png)
}

/// Draws training curves (loss, and training and validation accuracy, against episodes)
/// from a training history into a PNG at `path`.
pub fn training_curves(history: &[HistoryPoint], path: &Path) -> Result<()> {
    if history.is_empty() {
        return Err(Error::param("history", "no training history to plot yet"));
    }
    let max_ep = history.iter().map(|h| h.episode).max().unwrap_or(1).max(1) as f64;
    let max_loss = history.iter().map(|h| h.train_loss).filter(|x| x.is_finite()).fold(0.0f64, f64::max).max(1e-6) * 1.05;
    render_png(path, (1000, 420), |root, text| {
        let (left, right) = root.split_horizontally(500);
        let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
        let mut loss = ChartBuilder::on(&left);
        loss.margin(12).x_label_area_size(if text { 36 } else { 0 }).y_label_area_size(if text { 50 } else { 0 });
        if text {
            loss.caption("training loss", ("sans-serif", 18));
        }
        let mut loss = loss.build_cartesian_2d(0.0..max_ep, 0.0..max_loss).map_err(e)?;
        let mut mesh = loss.configure_mesh();
        if text {
            mesh.x_desc("episode");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(e)?;
        loss.draw_series(LineSeries::new(history.iter().map(|h| (h.episode as f64, h.train_loss)), BLUE.stroke_width(2))).map_err(e)?;

        let accs = history.iter().flat_map(|h| [Some(h.train_accuracy), h.val_accuracy]).flatten();
        let min_acc = accs.fold(1.0f64, f64::min).clamp(0.0, 1.0);
        let lo = (min_acc * 100.0 - 2.0).max(0.0);
        let mut acc = ChartBuilder::on(&right);
        acc.margin(12).x_label_area_size(if text { 36 } else { 0 }).y_label_area_size(if text { 50 } else { 0 });
        if text {
            acc.caption("accuracy (%)", ("sans-serif", 18));
        }
        let mut acc = acc.build_cartesian_2d(0.0..max_ep, lo..100.5).map_err(e)?;
        let mut mesh = acc.configure_mesh();
        if text {
            mesh.x_desc("episode");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(e)?;
        let train = acc.draw_series(LineSeries::new(history.iter().map(|h| (h.episode as f64, 100.0 * h.train_accuracy)), BLUE.stroke_width(2))).map_err(e)?;
        if text {
            train.label("training").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        }
        let val: Vec<(f64, f64)> = history.iter().filter_map(|h| h.val_accuracy.map(|v| (h.episode as f64, 100.0 * v))).collect();
        if !val.is_empty() {
            let s = acc.draw_series(LineSeries::new(val.clone(), RED.stroke_width(2))).map_err(e)?;
            if text {
                s.label("validation").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
            }
            acc.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(e)?;
        }
        if text {
            acc.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
        }
        Ok(())
    })
}

/// Draws a reliability diagram: for each series (a label and its calibration), the
/// accuracy of each non-empty confidence bin against the bin's mean confidence, with the
/// diagonal of perfect calibration and each series' ECE in its label.
pub fn reliability_diagram(series: &[(String, protonet::calibration::Calibration)], path: &Path) -> Result<()> {
    if series.is_empty() {
        return Err(Error::param("calibration", "no series to draw"));
    }
    let colours = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    render_png(path, (560, 560), |root, text| {
        let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
        let mut chart = ChartBuilder::on(&root);
        chart.margin(14).x_label_area_size(if text { 40 } else { 0 }).y_label_area_size(if text { 50 } else { 0 });
        if text {
            chart.caption("reliability: accuracy against confidence", ("sans-serif", 18));
        }
        let mut chart = chart.build_cartesian_2d(0.0..100.0, 0.0..100.0).map_err(e)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("mean confidence of the bin (%)").y_desc("accuracy in the bin (%)");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(e)?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (100.0, 100.0)], BLACK.mix(0.4).stroke_width(1))).map_err(e)?;
        for (i, (label, c)) in series.iter().enumerate() {
            let colour = colours[i % colours.len()];
            let points: Vec<(f64, f64)> = c.bins.iter().filter(|b| b.count > 0).map(|b| (100.0 * b.confidence, 100.0 * b.accuracy)).collect();
            let s = chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2))).map_err(e)?;
            if text {
                let name = format!("{label}: ECE {:.1}, conf {:.1} / acc {:.1}", 100.0 * c.ece, 100.0 * c.mean_confidence, 100.0 * c.accuracy);
                s.label(name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            }
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(e)?;
        }
        if text {
            chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
        }
        Ok(())
    })
}

/// Draws a confusion matrix (`confusion[true][predicted]` counts) as a PNG heat map, each
/// row as shares of that class's queries, with class names on the axes.
pub fn confusion_matrix(confusion: &[Vec<u64>], names: &[String], path: &Path) -> Result<()> {
    let n = confusion.len();
    if n == 0 || confusion.iter().any(|r| r.len() != n) || names.len() != n {
        return Err(Error::param("confusion", format!("needs a square matrix with one name per class ({} rows, {} names)", n, names.len())));
    }
    let cell = (640 / n as u32).clamp(8, 60);
    let label_w = if n <= 40 { 110 } else { 0 };
    let side = cell * n as u32;
    render_png(path, (side + label_w + 20, side + label_w + 40), |root, text| {
        let text = text && n <= 40;
        let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
        if text {
            root.draw(&Text::new("true class (rows) vs predicted (columns), % of row", (10, 8), ("sans-serif", 15))).map_err(e)?;
        }
        let (x0, y0) = (label_w as i32 + 10, 30);
        for (i, row) in confusion.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (j, &c) in row.iter().enumerate() {
                let share = c as f64 / total;
                let shade = (255.0 * (1.0 - share)) as u8;
                let colour = if i == j { RGBColor(shade, 255 - (255 - shade) / 3, shade) } else { RGBColor(255, shade, shade) };
                let (x, y) = (x0 + (j as u32 * cell) as i32, y0 + (i as u32 * cell) as i32);
                root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], colour.filled())).map_err(e)?;
                root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], RGBColor(220, 220, 220))).map_err(e)?;
                if text && cell >= 30 {
                    let s = format!("{:.0}", 100.0 * share);
                    root.draw(&Text::new(s, (x + 4, y + cell as i32 / 2 - 6), ("sans-serif", 12))).map_err(e)?;
                }
            }
            if text {
                let name = short_name(&names[i], 14);
                root.draw(&Text::new(name.clone(), (4, y0 + (i as u32 * cell) as i32 + cell as i32 / 2 - 6), ("sans-serif", 12))).map_err(e)?;
                let style = ("sans-serif", 12).into_font().transform(FontTransform::Rotate90);
                root.draw(&Text::new(name, (x0 + (i as u32 * cell) as i32 + cell as i32 / 2 + 6, y0 + side as i32 + 4), style)).map_err(e)?;
            }
        }
        Ok(())
    })
}

/// Projects `points` (each of the same dimension) onto their first two principal
/// components (centred; power iteration with deflation). Returns one `[x, y]` per point.
pub fn pca_2d(points: &[Vec<f32>]) -> Vec<[f32; 2]> {
    let n = points.len();
    let d = points.first().map_or(0, Vec::len);
    if n == 0 || d == 0 {
        return vec![[0.0, 0.0]; n];
    }
    let mut mean = vec![0f64; d];
    for p in points {
        for (m, x) in mean.iter_mut().zip(p) {
            *m += *x as f64 / n as f64;
        }
    }
    let x: Vec<Vec<f64>> = points.iter().map(|p| p.iter().zip(&mean).map(|(a, m)| *a as f64 - m).collect()).collect();
    let orthogonalise = |w: &mut Vec<f64>, components: &[Vec<f64>]| {
        for c in components {
            let dot: f64 = w.iter().zip(c).map(|(a, b)| a * b).sum();
            w.iter_mut().zip(c).for_each(|(wi, ci)| *wi -= dot * ci);
        }
        let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
        (norm > 0.0).then(|| w.iter_mut().for_each(|a| *a /= norm));
        norm
    };
    let total_variance: f64 = x.iter().flatten().map(|a| a * a).sum();
    let mut components: Vec<Vec<f64>> = Vec::new();
    for k in 0..2 {
        // A fixed, deterministic start, orthogonal to the earlier components.
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + ((i * 7 + k * 3) % 11) as f64 / 11.0).collect();
        orthogonalise(&mut v, &components);
        for _ in 0..200 {
            // w = X^T X v, without the earlier components.
            let xv: Vec<f64> = x.iter().map(|r| r.iter().zip(&v).map(|(a, b)| a * b).sum()).collect();
            let mut w = vec![0f64; d];
            for (r, s) in x.iter().zip(&xv) {
                for (wi, ri) in w.iter_mut().zip(r) {
                    *wi += ri * s;
                }
            }
            // No variance left in this direction (rank-deficient data): keep v.
            if orthogonalise(&mut w, &components) <= 1e-9 * total_variance {
                break;
            }
            v = w;
        }
        components.push(v);
    }
    x.iter()
        .map(|r| {
            let p = |c: &Vec<f64>| r.iter().zip(c).map(|(a, b)| a * b).sum::<f64>() as f32;
            [p(&components[0]), p(&components[1])]
        })
        .collect()
}

/// Draws a 2-D PCA projection of query embeddings (dots) and class prototypes (large
/// crosses), coloured by class, with a legend of class names, as a PNG at `path`.
/// `queries` pairs each embedding with its class index into `names`; `prototypes` has
/// one embedding per name.
pub fn embeddings(queries: &[(Vec<f32>, usize)], prototypes: &[Vec<f32>], names: &[String], path: &Path) -> Result<()> {
    if prototypes.len() != names.len() || queries.iter().any(|(_, c)| *c >= names.len()) {
        return Err(Error::param("classes", "every query's class must index the prototypes and names"));
    }
    let all: Vec<Vec<f32>> = queries.iter().map(|(e, _)| e.clone()).chain(prototypes.iter().cloned()).collect();
    if all.is_empty() {
        return Err(Error::param("embeddings", "nothing to plot"));
    }
    let xy = pca_2d(&all);
    let (qxy, pxy) = xy.split_at(queries.len());
    let bound = |f: fn(&[f32; 2]) -> f32| {
        let lo = xy.iter().map(f).fold(f32::INFINITY, f32::min) as f64;
        let hi = xy.iter().map(f).fold(f32::NEG_INFINITY, f32::max) as f64;
        let pad = ((hi - lo) * 0.05).max(1e-6);
        (lo - pad)..(hi + pad)
    };
    let (xr, yr) = (bound(|p| p[0]), bound(|p| p[1]));
    let legend = names.len() <= 30;
    render_png(path, (if legend { 960 } else { 760 }, 720), |root, text| {
        let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
        let (plot_area, legend_area) = if legend { root.split_horizontally(740) } else { (root.clone(), root.clone()) };
        let mut chart = ChartBuilder::on(&plot_area);
        chart.margin(12).x_label_area_size(if text { 30 } else { 0 }).y_label_area_size(if text { 50 } else { 0 });
        if text {
            chart.caption("embeddings: queries (dots) and prototypes (crosses), PCA", ("sans-serif", 17));
        }
        let mut chart = chart.build_cartesian_2d(xr, yr).map_err(e)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("PC 1").y_desc("PC 2");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.disable_mesh().draw().map_err(e)?;
        chart
            .draw_series(queries.iter().zip(qxy).map(|((_, c), p)| Circle::new((p[0] as f64, p[1] as f64), 3, class_colour(*c).mix(0.7).filled())))
            .map_err(e)?;
        chart.draw_series(pxy.iter().enumerate().map(|(c, p)| Cross::new((p[0] as f64, p[1] as f64), 9, class_colour(c).stroke_width(3)))).map_err(e)?;
        if legend && text {
            for (i, name) in names.iter().enumerate() {
                let y = 40 + 22 * i as i32;
                legend_area.draw(&Circle::new((14, y + 7), 6, class_colour(i).filled())).map_err(e)?;
                let name = short_name(name, 24);
                legend_area.draw(&Text::new(name, (26, y), ("sans-serif", 14))).map_err(e)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)] // unused where a program includes this file without running its tests (benchmarks)
    use super::*;

    #[test]
    fn training_curves_works() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use protonet::record::HistoryPoint;
        let h: Vec<HistoryPoint> = (1..=4)
            .map(|i| HistoryPoint {
                episode: 100 * i,
                train_loss: 1.0 / i as f64,
                train_accuracy: 0.5 + 0.1 * i as f64,
                val_accuracy: Some(0.6 + 0.05 * i as f64),
                val_ci95: Some(0.01),
                learning_rate: 1e-3,
                seconds: i as f64,
            })
            .collect();
        let path = std::env::temp_dir().join(format!("curves-doc-{}.png", std::process::id()));
        training_curves(&h, &path)?;
        assert!(std::fs::metadata(&path)?.len() > 0);
        std::fs::remove_file(&path).ok();
        Ok(())
    }

    #[test]
    fn confusion_matrix_works() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let path = std::env::temp_dir().join(format!("confusion-doc-{}.png", std::process::id()));
        confusion_matrix(&[vec![9, 1], vec![2, 8]], &["a".into(), "b".into()], &path)?;
        assert!(std::fs::metadata(&path)?.len() > 0);
        std::fs::remove_file(&path).ok();
        Ok(())
    }

    #[test]
    fn pca_2d_works() {
        // Points on a line in 3-D project onto a line: the second coordinate is ~0.
        let pts: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32, 2.0 * i as f32, -(i as f32)]).collect();
        let p = pca_2d(&pts);
        assert!(p.iter().all(|q| q[1].abs() < 1e-3));
    }

    #[test]
    fn embeddings_works() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let q = vec![(vec![0.0, 0.1, 0.0], 0), (vec![1.0, 0.9, 1.1], 1)];
        let p = vec![vec![0.0, 0.0, 0.0], vec![1.0, 1.0, 1.0]];
        let path = std::env::temp_dir().join(format!("pca-doc-{}.png", std::process::id()));
        embeddings(&q, &p, &["a".into(), "b".into()], &path)?;
        std::fs::remove_file(&path).ok();
        Ok(())
    }
}
