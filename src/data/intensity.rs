//! From Hounsfield units to network input in [0, 1]: window presets, the file's own window,
//! explicit windows and percentile clipping. Dark, low-contrast scans become readable here.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// How HU map to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Window {
    /// Width 1500, level -600.
    Lung,
    /// Width 350, level 50.
    Mediastinum,
    /// Head CT: width 80, level 40.
    Brain,
    /// Head CT, blood against the skull: width 200, level 80.
    Subdural,
    /// Head CT, early ischaemia: width 40, level 40.
    Stroke,
    /// Width 2800, level 600.
    Bone,
    /// Width 400, level 40.
    SoftTissue,
    /// The file's WindowCenter / WindowWidth (lung when the file has none).
    File,
    /// Explicit width and level.
    Explicit { width: f64, level: f64 },
    /// Clip to the 0.5th..99.5th percentile of the image itself.
    Percentile,
}

/// The named windows: name, width, level (HU). Parsing, printing, resolving and the review
/// page's presets all read this one table.
pub const PRESETS: [(Window, &str, f64, f64); 7] = [
    (Window::Lung, "lung", 1500.0, -600.0),
    (Window::Mediastinum, "mediastinum", 350.0, 50.0),
    (Window::Brain, "brain", 80.0, 40.0),
    (Window::Subdural, "subdural", 200.0, 80.0),
    (Window::Stroke, "stroke", 40.0, 40.0),
    (Window::Bone, "bone", 2800.0, 600.0),
    (Window::SoftTissue, "soft-tissue", 400.0, 40.0),
];

impl Window {
    /// (width, level) for a slice whose own window is `file`.
    pub fn resolve(&self, file: Option<(f64, f64)>) -> Option<(f64, f64)> {
        if let Some(&(_, _, width, level)) = PRESETS.iter().find(|p| p.0 == *self) {
            return Some((width, level));
        }
        match *self {
            Window::File => Some(file.map(|(c, w)| (w, c)).unwrap_or((1500.0, -600.0))),
            Window::Explicit { width, level } => Some((width, level)),
            _ => None,
        }
    }

    /// Maps HU to [0, 1].
    pub fn apply(&self, hu: &[f32], file: Option<(f64, f64)>) -> Vec<f32> {
        match self.resolve(file) {
            Some((width, level)) => apply_window(hu, width, level),
            None => percentile_normalize(hu, 0.5, 99.5),
        }
    }
}

impl FromStr for Window {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let word = s.trim().to_ascii_lowercase().replace('_', "-");
        if let Some(p) = PRESETS.iter().find(|p| p.1 == word || (word == "softtissue" && p.0 == Window::SoftTissue)) {
            return Ok(p.0);
        }
        match word.as_str() {
            "file" => Ok(Self::File),
            "percentile" => Ok(Self::Percentile),
            other => {
                let parts: Vec<&str> = other.split(',').collect();
                let parsed = match parts.as_slice() {
                    [w, l] => w.trim().parse::<f64>().ok().zip(l.trim().parse::<f64>().ok()),
                    _ => None,
                };
                match parsed {
                    Some((width, level)) if width > 0.0 => Ok(Self::Explicit { width, level }),
                    _ => {
                        let names: Vec<&str> = PRESETS.iter().map(|p| p.1).collect();
                        bail!("window must be {}, file, percentile or WIDTH,LEVEL (width > 0), got '{s}'", names.join(", "))
                    }
                }
            }
        }
    }
}

impl TryFrom<String> for Window {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.to_string()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File => write!(f, "file"),
            Self::Percentile => write!(f, "percentile"),
            Self::Explicit { width, level } => write!(f, "{width},{level}"),
            preset => f.write_str(PRESETS.iter().find(|p| p.0 == *preset).map_or("?", |p| p.1)),
        }
    }
}

/// Windows in channel order, written "brain,subdural,bone"; a WIDTH,LEVEL pair counts as one
/// window ("brain,200,80").
#[derive(Debug, Clone, PartialEq)]
pub struct WindowList(pub Vec<Window>);

impl FromStr for WindowList {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < parts.len() {
            let numeric = parts[i].parse::<f64>().is_ok();
            let take = if numeric { 2 } else { 1 };
            if i + take > parts.len() {
                bail!("'{s}': a numeric window is WIDTH,LEVEL, but '{}' has no level after it", parts[i]);
            }
            out.push(parts[i..i + take].join(",").parse::<Window>()?);
            i += take;
        }
        if out.is_empty() || parts.iter().any(|p| p.is_empty()) {
            bail!("'{s}': give windows separated by commas, such as brain,subdural,bone");
        }
        Ok(Self(out))
    }
}

/// Linear window: level - width/2 maps to 0, level + width/2 to 1, clipped.
pub fn apply_window(hu: &[f32], width: f64, level: f64) -> Vec<f32> {
    let lo = level - width / 2.0;
    hu.iter().map(|&v| (((v as f64 - lo) / width).clamp(0.0, 1.0)) as f32).collect()
}

/// Clips to the [lo, hi] percentiles and rescales to [0, 1].
pub fn percentile_normalize(values: &[f32], lo_pct: f64, hi_pct: f64) -> Vec<f32> {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return vec![0.0; values.len()];
    }
    sorted.sort_by(f32::total_cmp);
    let at = |p: f64| sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize];
    let (lo, hi) = (at(lo_pct), at(hi_pct));
    let span = (hi - lo).max(f32::EPSILON);
    values.iter().map(|&v| ((v - lo) / span).clamp(0.0, 1.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_lists_read_presets_and_pairs_in_order() {
        let l: WindowList = "brain, subdural,200,80,bone".parse().unwrap();
        assert_eq!(l.0, vec![Window::Brain, Window::Subdural, Window::Explicit { width: 200.0, level: 80.0 }, Window::Bone]);
        assert_eq!("80,40".parse::<WindowList>().unwrap().0, vec![Window::Explicit { width: 80.0, level: 40.0 }]);
        for bad in ["", "brain,", "brain,80", "brain,nonsense"] {
            assert!(bad.parse::<WindowList>().is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_map_hu_to_unit_interval() {
        let hu = [-1350.0, -600.0, 150.0, 3000.0];
        assert_eq!(Window::Lung.apply(&hu, None), vec![0.0, 0.5, 1.0, 1.0]);
        let m = Window::Mediastinum.apply(&[50.0, -125.0, 225.0], None);
        assert_eq!(m, vec![0.5, 0.0, 1.0]);
        assert_eq!(Window::File.resolve(Some((40.0, 100.0))), Some((100.0, 40.0)));
        assert_eq!("400,40".parse::<Window>().unwrap(), Window::Explicit { width: 400.0, level: 40.0 });
        assert!("0,40".parse::<Window>().is_err());
        assert!("most".parse::<Window>().is_err());
        for (w, name, width, level) in PRESETS {
            assert_eq!(name.parse::<Window>().unwrap(), w);
            assert_eq!(w.to_string(), name);
            assert_eq!(w.resolve(None), Some((width, level)));
        }
        assert_eq!("Soft_Tissue".parse::<Window>().unwrap(), Window::SoftTissue);
        let p = percentile_normalize(&(0..1000).map(|v| v as f32).collect::<Vec<_>>(), 0.5, 99.5);
        assert_eq!(p[0], 0.0);
        assert_eq!(p[999], 1.0);
    }
}
