//! `apunet eval`, `apunet metrics` and `apunet plot`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::eval::report::Report;
use crate::jobs::evaluate::{EvalRequest, evaluate_run, plot_run, score_files};

use super::SamplingArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Dataset npz to sample and score (its masks are the experts).
    #[arg(long)]
    pub data: PathBuf,
    /// Directory for metrics.json, per_image.csv, report.md, samples.npz and figures.
    #[arg(long)]
    pub out: PathBuf,
    /// Images shown in the figure (indices); default: the first 8.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub images: Option<Vec<usize>>,
    /// Draw masks as contours over the CT.
    #[arg(long)]
    pub overlay: bool,
    /// Do not write review.html, the page to look through every case [default: write it].
    #[arg(long)]
    pub no_review: bool,
    /// Open review.html in the default browser when done.
    #[arg(long)]
    pub open: bool,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// npz with `samples` uint8 [N,n,H,W] (any model's).
    #[arg(long)]
    pub samples: PathBuf,
    /// npz with `masks` uint8 [N,M,H,W] (the annotators').
    #[arg(long)]
    pub labels: PathBuf,
    /// Also write metrics.json, per_image.csv, report.md and the GED histogram here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print only the summary, not every image.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The run directory whose metrics.csv is drawn.
    #[arg(long)]
    pub run: PathBuf,
    /// Default: RUN/curves.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn print_summary(report: &Report) {
    let s = &report.summary;
    let get = |k: &str| report.stat(k).map(|s| format!("{:.4} [{:.4}, {:.4}]", s.mean, s.ci95[0], s.ci95[1]));
    crate::say!(
        "{} images x {} samples x {} annotators\nGED    {}\nHM-IoU {}\nDice (majority) {}\nECE {:.4}",
        s.images,
        s.samples_per_image,
        s.annotators,
        get("ged").unwrap_or_default(),
        get("hm_iou").unwrap_or_default(),
        get("dice_majority").unwrap_or_default(),
        s.ece
    );
}

pub fn metrics_cmd(a: MetricsArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let report = score_files(&a.samples, &a.labels, a.out.as_deref())?;
    let scored_in = started.elapsed().as_secs_f64();
    if !a.quiet {
        crate::say!("image,ged,hm_iou");
        for p in &report.per_image {
            crate::say!("{},{:.9},{:.9}", p.index, p.ged, p.hm_iou);
        }
    }
    print_summary(&report);
    crate::say!("scored in {scored_in:.3} s (reading the files and writing the report included)");
    if let Some(dir) = &a.out {
        crate::say!("wrote {}/metrics.json, per_image.csv, report.md, ged_histogram.png", dir.display());
    }
    Ok(())
}

impl EvalArgs {
    /// The request these flags make.
    pub fn request(self) -> EvalRequest {
        EvalRequest {
            sampling: self.sampling,
            data: self.data,
            out: self.out,
            images: self.images,
            overlay: self.overlay,
            review: !self.no_review,
            open: self.open,
        }
    }
}

pub fn eval_cmd(a: EvalArgs) -> Result<()> {
    let req = a.request();
    let report = evaluate_run(&req)?;
    print_summary(&report);
    crate::say!(
        "wrote {}: metrics.json, per_image.csv, report.md, samples.npz, samples.png, ged_histogram.png, inputs.npz{}",
        req.out.display(),
        if req.review { ", review.html" } else { "" }
    );
    Ok(())
}

pub fn plot_cmd(a: PlotArgs) -> Result<()> {
    let out = plot_run(&a.run, a.out.as_deref())?;
    crate::say!("wrote {}", out.display());
    Ok(())
}
