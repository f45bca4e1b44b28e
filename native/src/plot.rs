//! `bert-native plot`: loss and learning-rate curves of a DLLogger log, as a PNG.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// DejaVu Sans Mono (see `assets/DejaVuSansMono.LICENSE`), so labels render without system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// Arguments of `plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A DLLogger log written by `pretrain` (e.g. OUTPUT_DIR/dllogger.json).
    log: PathBuf,
    /// The PNG to write (default: the log's name with `.png`).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Per-step values read from a log.
#[derive(Debug, Default)]
struct Curves {
    loss: Vec<(f64, f64)>,
    mlm_loss: Vec<(f64, f64)>,
    nsp_loss: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
}

fn read_curves(log: &Path) -> Result<Curves> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut curves = Curves::default();
    for (number, line) in text.lines().enumerate() {
        let Some(json) = line.strip_prefix("DLLL ") else {
            continue;
        };
        let entry: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("{}:{}: not a DLLogger line", log.display(), number + 1))?;
        let Some(step) = entry["step"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(|s| s.as_f64())
        else {
            continue;
        };
        let data = &entry["data"];
        for (key, series) in [
            ("loss", &mut curves.loss),
            ("mlm_loss", &mut curves.mlm_loss),
            ("nsp_loss", &mut curves.nsp_loss),
            ("lr", &mut curves.lr),
        ] {
            if let Some(value) = data[key].as_f64() {
                series.push((step, value));
            }
        }
    }
    if curves.loss.is_empty() {
        bail!("{}: no training steps logged", log.display());
    }
    Ok(curves)
}

/// Runs `plot`.
pub fn run(args: PlotArgs) -> Result<()> {
    let curves = read_curves(&args.log)?;
    let output = args
        .output
        .unwrap_or_else(|| args.log.with_extension("png"));
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("cannot load the embedded font"))?;
    draw(&curves, &output).map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", output.display()))?;
    eprintln!("wrote {}", output.display());
    Ok(())
}

fn range(series: &[&[(f64, f64)]]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = series.iter().flat_map(|s| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-12);
    (x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
}

fn draw(curves: &Curves, output: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(output, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(500);

    let (x, y) = range(&[&curves.loss, &curves.mlm_loss, &curves.nsp_loss]);
    let mut chart = ChartBuilder::on(&top)
        .caption("pretraining loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()?;
    for (series, label, color) in [
        (&curves.loss, "loss", BLUE),
        (&curves.mlm_loss, "mlm_loss", RED),
        (&curves.nsp_loss, "nsp_loss", GREEN),
    ] {
        if !series.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    series.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let (x, y) = range(&[&curves.lr]);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("learning rate", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()?;
    chart.draw_series(LineSeries::new(
        curves.lr.iter().copied(),
        MAGENTA.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}
