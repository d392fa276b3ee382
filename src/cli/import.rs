//! `apunet import`: an npz dataset from a folder laid out like nnU-Net's raw data (the work is
//! `data::import`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::import::{ImportSettings, import_folder};
use crate::data::intensity::WindowList;
use crate::data::scan::Units;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Folder with images/ and labels/; or LIDC crops as people hold them: the PyTorch port's
    /// pickle (a file or a folder of them) or DeepMind's folders (images/ and gt/).
    #[arg(long)]
    pub input: PathBuf,
    /// Dataset npz to write; the manifest goes beside it (.manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Crop side in pixels (LIDC crops larger than this keep their centre).
    #[arg(long, default_value_t = 128)]
    pub crop: usize,
    /// Background crops as a share of all crops, in [0, 1).
    #[arg(long, default_value_t = 0.2)]
    pub background_share: f64,
    /// The window for CT inputs: lung, mediastinum, brain, subdural, stroke, bone, soft-tissue,
    /// file, percentile or WIDTH,LEVEL; several, comma-separated, are stacked as channels in
    /// that order (head CT: brain,subdural,bone).
    #[arg(long = "windows", visible_alias = "window", default_value = "lung", value_name = "WINDOW[,WINDOW...]")]
    pub windows: WindowList,
    /// Neighbouring slices on each side stacked as further channels (2.5D; the volume's ends
    /// mirrored); cases of a single slice are skipped.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub context_slices: usize,
    /// Contrast-limited adaptive histogram equalisation after the window (dark, low-contrast scans).
    #[arg(long)]
    pub clahe: bool,
    /// Resample every scan to this in-plane pixel spacing in mm first (bilinear for CT, by area
    /// for masks) and record it, so that predict does the same [default: each scan's own grid].
    #[arg(long, value_name = "MM")]
    pub spacing: Option<f64>,
    /// What NIfTI images' values are: hu or unit [default: read from each file's header and values].
    #[arg(long, value_enum)]
    pub units: Option<Units>,
    /// Seed of the background crops' places.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl ImportArgs {
    pub fn settings(self) -> ImportSettings {
        let Self { input, out, crop, background_share, windows, context_slices, clahe, units, spacing, seed } = self;
        ImportSettings { input, out, crop, background_share, windows: windows.0, context_slices, clahe, units, spacing, seed }
    }
}

pub fn import_cmd(a: ImportArgs) -> Result<()> {
    let s = a.settings();
    let done = import_folder(&s)?;
    crate::say!(
        "wrote {} ({} crops {}x{}, {} annotators, {} cases skipped) and {}",
        s.out.display(),
        done.crops,
        s.crop,
        s.crop,
        done.annotators,
        done.skipped.len(),
        done.manifest.display()
    );
    Ok(())
}
