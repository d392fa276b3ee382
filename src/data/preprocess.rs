//! How scans became network input, recorded in every dataset and run so that nothing is fed
//! to a model in other units than it trained on. `None` for a record means "unknown" (a
//! dataset that never passed through `apunet import`): it is never taken for a window.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::intensity::Window;

/// How a scan becomes network input; recorded in the dataset and the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preprocess {
    /// The HU window that mapped CT to [0, 1]; unset when the inputs were intensities already
    /// (PNG, TIFF, a NIfTI of intensities), which no window touches.
    pub window: Option<Window>,
    /// Further HU windows stacked after the first as channels (`--windows brain,subdural,bone`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_windows: Vec<Window>,
    /// Neighbouring slices on each side stacked as channels (2.5D; edges mirrored).
    #[serde(skip_serializing_if = "is_zero")]
    pub context_slices: usize,
    /// Contrast-limited adaptive histogram equalisation after windowing (for dark scans).
    pub clahe: bool,
    pub clahe_clip: f32,
    /// The in-plane pixel spacing (mm) every scan was resampled to (`import --spacing`);
    /// unset: each scan's own grid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spacing: Option<f64>,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self { window: None, extra_windows: Vec::new(), context_slices: 0, clahe: false, clahe_clip: 2.0, spacing: None }
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Preprocess {
    /// Every window in channel order (empty for intensities).
    pub fn windows(&self) -> Vec<Window> {
        match self.window {
            Some(first) => std::iter::once(first).chain(self.extra_windows.iter().copied()).collect(),
            None => Vec::new(),
        }
    }

    /// Input channels: per window (one for intensities), the slice and its neighbours. Channel
    /// `w * (2K + 1) + K + o` is window `w` of the slice `o` away.
    pub fn channels(&self) -> usize {
        (1 + self.extra_windows.len()) * (2 * self.context_slices + 1)
    }

    /// What the inputs were before they became [0, 1].
    pub fn units(&self) -> Units {
        if self.window.is_some() { Units::Hu } else { Units::Unit }
    }
}

/// A record for messages: "window lung (width 1500, level -600), CLAHE clip 2" or "unknown".
pub fn describe(p: Option<&Preprocess>) -> String {
    let Some(p) = p else { return "unknown (no preprocessing record)".into() };
    let one = |w: &Window| match w.resolve(None) {
        Some((width, level)) if !matches!(w, Window::File) => format!("{w} (width {width}, level {level})"),
        _ => w.to_string(),
    };
    let window = match p.windows().as_slice() {
        [] => "intensities in [0, 1], no HU window".to_string(),
        [w] => format!("HU window {}", one(w)),
        ws => format!("HU windows {} stacked as channels", ws.iter().map(one).collect::<Vec<_>>().join(", ")),
    };
    let window = match p.context_slices {
        0 => window,
        k => format!("{window}, {k} neighbouring slice{} on each side", if k == 1 { "" } else { "s" }),
    };
    let window = if p.clahe { format!("{window}, CLAHE clip {}", p.clahe_clip) } else { window };
    match p.spacing {
        Some(mm) => format!("{window}, resampled to {mm} mm pixels"),
        None => window,
    }
}

/// The units a scan's values are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Units {
    /// Hounsfield units: a window maps them to [0, 1].
    Hu,
    /// Intensities already in [0, 1] (8/16-bit images are scaled by their type's range).
    Unit,
}

impl std::fmt::Display for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Units::Hu => "Hounsfield units",
            Units::Unit => "intensities in [0, 1]",
        })
    }
}

/// Refuses data whose preprocessing differs from what `expected` was made with, naming both,
/// unless `allow` (the user's `--allow-mismatch`), which only warns.
pub fn check_match(expected: (&str, Option<&Preprocess>), got: (&str, Option<&Preprocess>), allow: bool) -> Result<()> {
    if expected.1 == got.1 {
        return Ok(());
    }
    let text = format!("{} was made with {}, but {} with {}", expected.0, describe(expected.1), got.0, describe(got.1));
    if allow {
        tracing::warn!("{text}; going on as --allow-mismatch asks");
        return Ok(());
    }
    bail!("{text}: their intensities do not mean the same. Use data preprocessed the same way, or give --allow-mismatch to go on knowingly")
}

/// What `predict` applies to a scan: the run's record, the scan's units, and the user's
/// `--window` and `--allow-mismatch` decide. Errors name both sides.
pub fn for_scan(run: (&str, Option<&Preprocess>), scan: (&str, Units), window: Option<Window>, allow: bool) -> Result<Preprocess> {
    let (run_name, record) = run;
    let (scan_name, units) = scan;
    let base = record.cloned().unwrap_or_default();
    match (units, window, record) {
        (Units::Hu, Some(w), Some(p)) if !p.extra_windows.is_empty() => bail!(
            "--window {w} replaces one window, but {run_name} was trained on {}; leave out --window to apply the run's",
            describe(Some(p))
        ),
        (Units::Hu, Some(w), _) => Ok(Preprocess { window: Some(w), ..base }),
        (Units::Hu, None, Some(p)) if p.window.is_some() => Ok(p.clone()),
        (Units::Hu, None, Some(p)) => bail!(
            "{scan_name} holds {units}, but {run_name} was trained on {}: no window is known for it. \
             Give --window (a preset such as lung or brain, file, percentile or WIDTH,LEVEL) to choose one knowingly",
            describe(Some(p))
        ),
        (Units::Hu, None, None) => bail!(
            "{scan_name} holds {units}, but {run_name}'s training data carry no preprocessing record, so \
             apunet cannot know which window turned CT into its inputs. Give --window (a preset such as \
             lung or brain, file, percentile or WIDTH,LEVEL) to choose one knowingly"
        ),
        (Units::Unit, Some(w), _) => {
            bail!("--window {w} applies to scans in Hounsfield units, but {scan_name} holds {units}")
        }
        (Units::Unit, None, Some(p)) if p.window.is_some() && !allow => bail!(
            "{scan_name} holds {units}, but {run_name} was trained on CT in HU through {}. Give the scan as \
             DICOM or NIfTI in HU (or --units hu if this file's values are HU), or --allow-mismatch to \
             feed its intensities as they are",
            describe(Some(p))
        ),
        (Units::Unit, None, _) => Ok(Preprocess { window: None, ..base }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lung() -> Preprocess {
        Preprocess { window: Some(Window::Lung), ..Default::default() }
    }

    #[test]
    fn a_scan_gets_the_runs_window_or_a_clear_refusal() {
        let run = |p: Option<Preprocess>| p;
        let r = run(Some(lung()));
        assert_eq!(for_scan(("run", r.as_ref()), ("ct.nii", Units::Hu), None, false).unwrap(), lung());
        let m = for_scan(("run", r.as_ref()), ("ct.nii", Units::Hu), Some(Window::Mediastinum), false).unwrap();
        assert_eq!(m.window, Some(Window::Mediastinum));
        // Unknown is never taken for a window.
        let e = for_scan(("run", None), ("ct.nii", Units::Hu), None, false).unwrap_err().to_string();
        assert!(e.contains("no preprocessing record") && e.contains("--window"), "{e}");
        let e = for_scan(("run", r.as_ref()), ("x.png", Units::Unit), None, false).unwrap_err().to_string();
        assert!(e.contains("x.png holds intensities") && e.contains("width 1500"), "{e}");
        assert_eq!(for_scan(("run", r.as_ref()), ("x.png", Units::Unit), None, true).unwrap().window, None);
        assert!(for_scan(("run", None), ("x.png", Units::Unit), Some(Window::Lung), false).is_err());
        assert_eq!(for_scan(("run", None), ("x.png", Units::Unit), None, false).unwrap(), Preprocess::default());
    }

    #[test]
    fn mismatched_records_are_refused_naming_both() {
        let med = Preprocess { window: Some(Window::Mediastinum), ..Default::default() };
        let e = check_match(("a.npz", Some(&lung())), ("b.npz", Some(&med)), false).unwrap_err().to_string();
        assert!(e.contains("a.npz was made with HU window lung") && e.contains("b.npz with HU window mediastinum"), "{e}");
        let e = check_match(("run", Some(&lung())), ("c.npz", None), false).unwrap_err().to_string();
        assert!(e.contains("unknown"), "{e}");
        check_match(("run", Some(&lung())), ("c.npz", None), true).unwrap();
        check_match(("run", None), ("c.npz", None), false).unwrap();
    }
}
