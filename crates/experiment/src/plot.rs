//! Draws a [`Chart`] as SVG and PNG with plotters.
//!
//! Text never depends on the machine's fonts: plotters is built with `ab_glyph` instead of
//! font-kit, and DejaVu Sans (embedded by the `dejavu` crate, under the free Bitstream Vera /
//! DejaVu license) is registered as `sans-serif` before anything is drawn. A CI container with
//! no fonts at all renders the same labelled PNG as a desktop.
//!
//! The x axis is log2 of concurrency (levels like 1, 8, 32 spread evenly), labelled at the
//! powers of two.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::charts::Chart;

#[derive(Debug, thiserror::Error)]
#[error("drawing {}: {message}", path.display())]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

/// Tableau 10: distinguishable, and readable on white.
const COLORS: [RGBColor; 10] = [
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
const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";

fn register_embedded_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF shipped by the crate: failing here is a build problem.
        if register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err() {
            panic!("the embedded DejaVu Sans font did not parse");
        }
    });
}

/// Writes `<dir>/<stem>.svg` and `<dir>/<stem>.png`; returns both paths.
pub fn render(chart: &Chart, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    register_embedded_font();
    let svg = dir.join(format!("{}.svg", chart.stem));
    let png = dir.join(format!("{}.png", chart.stem));
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| PlotError { path, message }
    };
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart).map_err(fail(&svg))?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart).map_err(fail(&png))?;
    Ok(vec![svg, png])
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let levels: Vec<f64> = chart.x_levels().into_iter().map(f64::log2).collect();
    let (lo, hi) = match (levels.first(), levels.last()) {
        (Some(&lo), Some(&hi)) => (lo, hi),
        _ => (0.0, 1.0),
    };
    // Half a doubling of margin each side, so end points and their markers are not on the frame.
    let x_range = (lo - 0.5)..(hi + 0.5);
    // About one tick per doubling: plotters then steps by 1 in log2 space, and only whole
    // powers of two get a label.
    let x_ticks = (hi - lo).ceil() as usize + 3;
    let y_top = if chart.y_max() > 0.0 { chart.y_max() * 1.1 } else { 1.0 };
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, 0.0..y_top)
        .map_err(err)?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_labels(x_ticks)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", x.round().exp2())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for s in &chart.series {
        let color = COLORS[s.color % COLORS.len()];
        let style = color.stroke_width(2);
        let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x.log2(), y)).collect();
        let anno = if s.dashed {
            ctx.draw_series(DashedLineSeries::new(points.clone(), 10, 6, style)).map_err(err)?
        } else {
            ctx.draw_series(LineSeries::new(points.clone(), style)).map_err(err)?
        };
        let dashed = s.dashed;
        anno.label(&s.label).legend(move |(x, y)| {
            // A dashed legend sample is two short strokes; a solid one is one line. Composed
            // on an anchor at the origin, so the strokes' coordinates are absolute.
            let (first, second) = if dashed {
                (vec![(x, y), (x + 7, y)], vec![(x + 13, y), (x + 20, y)])
            } else {
                (vec![(x, y), (x + 20, y)], vec![])
            };
            EmptyElement::at((0, 0)) + PathElement::new(first, style) + PathElement::new(second, style)
        });
        ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
