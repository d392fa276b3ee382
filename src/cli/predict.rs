//! `apunet predict`: samples, mean and uncertainty for scans of any size (DICOM, NIfTI, PNG),
//! written as PNG and as NIfTI in the input's geometry.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::intensity::Window;
use crate::data::preprocess::{self, Units};
use crate::jobs::predict::{PredictRequest, predict_files};

use super::SamplingArgs;

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A scan (.dcm, .nii, .nii.gz, .png, .tif), a DICOM series folder, or a folder of scans.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: one subfolder of PNG and NIfTI files per input scan.
    #[arg(long)]
    pub out: PathBuf,
    /// Patch overlap in [0, 1).
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f64,
    /// Override the run's window: lung, mediastinum, brain, subdural, stroke, bone, soft-tissue, file, percentile or WIDTH,LEVEL (for
    /// scans in HU; needed where the run's training data carry no preprocessing record).
    #[arg(long)]
    pub window: Option<Window>,
    /// What a NIfTI's values are: hu or unit (intensities in [0, 1]) [default: read from its
    /// header and values; DICOM is HU, PNG/TIFF intensities].
    #[arg(long, value_enum)]
    pub units: Option<Units>,
    /// Do not write review.html (the page to look through the samples over the scan).
    #[arg(long)]
    pub no_review: bool,
    /// Open each scan's review.html in the default browser when done.
    #[arg(long)]
    pub open: bool,
}

pub fn predict_cmd(a: PredictArgs) -> Result<()> {
    let n = a.sampling.n;
    let req = PredictRequest {
        sampling: a.sampling,
        input: a.input,
        out: a.out,
        overlap: a.overlap,
        window: a.window,
        units: a.units,
        review: !a.no_review,
        open: a.open,
    };
    predict_files(&req, |r| {
        crate::say!(
            "{}: {} slice(s) {}x{} in {}, input made with {}; {} patches of {}x{}, {n} samples in {:.1} s ({:.2} slices/s) -> {}",
            r.name,
            r.slices,
            r.height,
            r.width,
            r.units,
            preprocess::describe(Some(&r.applied)),
            r.patches,
            r.patch.0,
            r.patch.1,
            r.seconds,
            r.slices as f64 / r.seconds.max(1e-9),
            r.dir.display()
        );
        match &r.dicom_seg {
            Ok(files) if !files.is_empty() => {
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                crate::say!("  DICOM SEG over the source series: {}", names.join(", "))
            }
            Ok(_) => {}
            Err(why) => tracing::warn!("{}: no DICOM SEG written: {why}", r.name),
        }
    })?;
    Ok(())
}
