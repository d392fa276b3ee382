//! Train/validation split grouped by series, so no patient is on both sides.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Indices of the training and validation examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Puts whole series into validation until about `val_fraction` of the images are there.
pub fn split_by_series(series: &[String], val_fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&val_fraction) {
        bail!("validation fraction must be in [0, 1), got {val_fraction}");
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        groups.entry(s.as_str()).or_default().push(i);
    }
    let mut keys: Vec<&str> = groups.keys().copied().collect();
    keys.shuffle(&mut StdRng::seed_from_u64(seed));
    let target = (series.len() as f64 * val_fraction).round() as usize;
    let mut val = Vec::new();
    let mut train = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let g = &groups[key];
        // Keep at least one series for training.
        let last = k + 1 == keys.len() && train.is_empty();
        if val.len() < target && !last {
            val.extend_from_slice(g);
        } else {
            train.extend_from_slice(g);
        }
    }
    if val_fraction > 0.0 && val.is_empty() {
        bail!("cannot make a validation split: only {} series; add data or use --val-fraction 0", keys.len());
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok(Split { train, val })
}

/// `apunet split`: `data` split by series into two npz files; the two sizes.
pub fn split_file(
    data: &std::path::Path,
    val_fraction: f64,
    seed: u64,
    train_out: &std::path::Path,
    val_out: &std::path::Path,
) -> Result<(usize, usize)> {
    let ds = super::Dataset::load(data)?;
    let sp = split_by_series(&ds.series, val_fraction, seed)?;
    ds.subset(&sp.train).save(train_out)?;
    ds.subset(&sp.val).save(val_out)?;
    Ok((sp.train.len(), sp.val.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_series_on_both_sides() {
        let series: Vec<String> = (0..40).map(|i| format!("s{}", i / 3)).collect();
        let sp = split_by_series(&series, 0.25, 1).unwrap();
        let tr: HashSet<_> = sp.train.iter().map(|&i| &series[i]).collect();
        let va: HashSet<_> = sp.val.iter().map(|&i| &series[i]).collect();
        assert!(tr.is_disjoint(&va));
        assert_eq!(sp.train.len() + sp.val.len(), 40);
        assert!((8..=14).contains(&sp.val.len()), "val {}", sp.val.len());
        assert_eq!(sp, split_by_series(&series, 0.25, 1).unwrap());
    }

    #[test]
    fn one_series_cannot_be_split() {
        let series = vec!["a".to_string(); 5];
        assert!(split_by_series(&series, 0.2, 0).is_err());
        assert_eq!(split_by_series(&series, 0.0, 0).unwrap().train.len(), 5);
    }
}
