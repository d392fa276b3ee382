//! The main job on an embedded default: a synthetic dataset made in-process, a short training
//! run, samples and an evaluation on held-out images the model never saw.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use crate::data::head_ct::{self, HeadCtConfig};
use crate::data::import::{ImportSettings, import_folder};
use crate::data::intensity::Window;
use crate::data::synth::{self, SynthConfig, SynthKind};
use crate::device::parse_device;
use crate::jobs::evaluate::{EvalRequest, evaluate_run, plot_run};
use crate::jobs::sample::{RunSampling, sample_to_file};
use crate::model::ModelConfig;
use crate::train::{self, RunConfig, TrainConfig, TrainRequest};

/// The demo's size and seed.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub out: PathBuf,
    /// Which synthetic data: lung-CT-like crops, or head CT in HU through `import`.
    pub kind: SynthKind,
    pub epochs: usize,
    pub count: usize,
    pub size: usize,
    pub device: String,
    pub seed: u64,
}

/// A model sized so the demo finishes in minutes on two CPU cores.
pub fn demo_config(epochs: usize, seed: u64) -> RunConfig {
    RunConfig {
        model: ModelConfig { filters: vec![16, 32, 64, 96], ..Default::default() },
        train: TrainConfig { epochs, batch_size: 8, lr: 2e-3, seed, figure_images: 8, figure_samples: 4, ..Default::default() },
        ..Default::default()
    }
}

/// About `crops` crops of `size` px from synthetic head-CT cases written into `dir` and
/// imported as a user would: brain window, 0.5 mm pixels.
fn head_ct_crops(dir: &std::path::Path, crops: usize, size: usize, seed: u64) -> Result<crate::data::Dataset> {
    // A case gives about 1.4 crops: its lesions and a share of background.
    let cases = (crops * 5 / 7).max(1);
    head_ct::write_folder(dir, &HeadCtConfig { cases, size: 128.max(size), annotators: 4, seed })?;
    let out = dir.with_extension("npz");
    import_folder(&ImportSettings {
        input: dir.into(),
        out: out.clone(),
        crop: size,
        background_share: 0.2,
        windows: vec![Window::Brain],
        context_slices: 0,
        clahe: false,
        units: None,
        spacing: Some(0.5),
        seed,
    })?;
    crate::data::Dataset::load(&out)
}

/// The held-out set's seed: never the training seed.
pub fn heldout_seed(seed: u64) -> u64 {
    seed ^ 0x5E_ED0F_7E57
}

/// `apunet demo`: synthetic data, a short training run, samples and an evaluation on held-out
/// images, each step reported through `say`.
pub fn run_demo(a: &DemoSettings, mut say: impl FnMut(String)) -> Result<()> {
    let started = Instant::now();
    let device = parse_device(&a.device)?;
    std::fs::create_dir_all(&a.out)?;
    let data = a.out.join("synthetic.npz");
    // Scored on images it never saw: another seed's draw of the same generator.
    let heldout = a.out.join("heldout.npz");
    let held = (a.count / 3).max(1);
    let (ds, test) = match a.kind {
        SynthKind::LidcLike => (
            synth::generate(&SynthConfig { count: a.count, size: a.size, seed: a.seed, ..Default::default() })?,
            synth::generate(&SynthConfig { count: held, size: a.size, seed: heldout_seed(a.seed), ..Default::default() })?,
        ),
        SynthKind::HeadCt => (
            head_ct_crops(&a.out.join("head-ct/train"), a.count, a.size, a.seed)?,
            head_ct_crops(&a.out.join("head-ct/heldout"), held, a.size, heldout_seed(a.seed))?,
        ),
    };
    ds.save(&data)?;
    test.save(&heldout)?;
    say(format!(
        "1/4 synthetic data: {} ({} crops {}x{}, {} annotators) and held-out {} ({} crops)",
        data.display(),
        ds.len(),
        a.size,
        a.size,
        ds.annotators(),
        heldout.display(),
        test.len()
    ));

    let run_dir = a.out.join("run");
    let resume = run_dir.join("checkpoints/state.json").exists();
    let summary = train::train(TrainRequest {
        data: data.clone(),
        out: run_dir.clone(),
        config: demo_config(a.epochs, a.seed),
        device,
        resume,
        quiet: false,
    })?;
    say(format!("2/4 trained: {} (best epoch {})", run_dir.display(), summary.best_epoch));

    let samples = a.out.join("samples.npz");
    let sampling = RunSampling { seed: a.seed, device: a.device.clone(), ..RunSampling::for_run(&run_dir) };
    sample_to_file(&sampling, &heldout, &samples, 8)?;
    say(format!("3/4 sampled 16 masks per held-out image: {}", samples.display()));
    let eval_dir = a.out.join("eval");
    let req =
        EvalRequest { sampling, data: heldout.clone(), out: eval_dir.clone(), images: None, overlay: false, review: true, open: false };
    let report = evaluate_run(&req)?;
    let curves = plot_run(&run_dir, None)?;
    let stat = |k: &str| report.stat(k).map_or(f64::NAN, |s| s.mean);
    say(format!(
        "GED {:.3}, HM-IoU {:.3}, Dice (majority) {:.3}; curves: {}",
        stat("ged"),
        stat("hm_iou"),
        stat("dice_majority"),
        curves.display()
    ));
    say(format!(
        "4/4 evaluated on the held-out images: {}/report.md; look through every case: {}/review.html",
        eval_dir.display(),
        eval_dir.display()
    ));
    let last = summary.history.last();
    if let Some(m) = last {
        say(format!("final epoch {}: train loss {:.3}, val loss {:.3}, val GED {:.4}", m.epoch, m.loss, m.val_loss, m.val_ged));
    }
    say(format!(
        "figures: {}/figures/, {}/curves.png, {} and {}/samples.png; {:.0} s in all",
        run_dir.display(),
        run_dir.display(),
        samples.with_extension("png").display(),
        eval_dir.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
