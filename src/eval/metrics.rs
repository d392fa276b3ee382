//! Metrics over binary masks with the field's definitions (PHiSeg / MoSE on LIDC), as pure
//! functions. Masks are bit-packed so the pairwise IoUs that GED needs cost a few popcounts.

pub use crate::data::masks::{frequency, majority};
use anyhow::{Result, bail};
use pathfinding::prelude::{Matrix, kuhn_munkres};

/// A binary mask packed 64 pixels to a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitMask {
    words: Vec<u64>,
    count: u32,
}

impl BitMask {
    pub fn new(mask: &[u8]) -> Self {
        let mut words = vec![0u64; mask.len().div_ceil(64)];
        for (i, &v) in mask.iter().enumerate() {
            if v != 0 {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        let count = words.iter().map(|w| w.count_ones()).sum();
        Self { words, count }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn intersection(&self, other: &Self) -> u32 {
        self.words.iter().zip(&other.words).map(|(a, b)| (a & b).count_ones()).sum()
    }
}

/// 1 - IoU, with d = 0 when both masks are empty and IoU = 0 when exactly one is.
pub fn distance(a: &BitMask, b: &BitMask) -> f64 {
    let inter = a.intersection(b);
    let union = a.count + b.count - inter;
    if union == 0 { 0.0 } else { 1.0 - inter as f64 / union as f64 }
}

/// IoU with the same conventions (1 when both are empty).
pub fn iou(a: &BitMask, b: &BitMask) -> f64 {
    1.0 - distance(a, b)
}

/// Dice = 2|A∩B| / (|A|+|B|), 1 when both are empty.
pub fn dice(a: &BitMask, b: &BitMask) -> f64 {
    let total = a.count + b.count;
    if total == 0 { 1.0 } else { 2.0 * a.intersection(b) as f64 / total as f64 }
}

fn pairwise(a: &[BitMask], b: &[BitMask]) -> Vec<f64> {
    a.iter().flat_map(|x| b.iter().map(move |y| distance(x, y))).collect()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Squared generalized energy distance for one image (the quantity PHiSeg and MoSE report
/// as GED): 2/(NM) sum d(s,y) - 1/N^2 sum d(s,s') - 1/M^2 sum d(y,y'), self-pairs included.
pub fn ged(samples: &[BitMask], labels: &[BitMask]) -> f64 {
    2.0 * mean(&pairwise(samples, labels)) - mean(&pairwise(samples, samples)) - mean(&pairwise(labels, labels))
}

/// `ged` on unpacked masks.
pub fn ged_squared(samples: &[&[u8]], labels: &[&[u8]]) -> f64 {
    let s: Vec<BitMask> = samples.iter().map(|m| BitMask::new(m)).collect();
    let y: Vec<BitMask> = labels.iter().map(|m| BitMask::new(m)).collect();
    ged(&s, &y)
}

/// Hungarian-matched IoU: the M labels repeated to N, optimal one-to-one assignment of samples
/// to labels by cost d, score = mean IoU over the matched pairs. N must be a multiple of M.
pub fn hungarian_iou(samples: &[BitMask], labels: &[BitMask]) -> Result<f64> {
    let (n, m) = (samples.len(), labels.len());
    if m == 0 || n == 0 {
        bail!("Hungarian-matched IoU needs at least one sample and one label (got {n} and {m})");
    }
    if n % m != 0 {
        bail!("Hungarian-matched IoU needs the sample count ({n}) to be a multiple of the annotator count ({m})");
    }
    let iou_sy: Vec<f64> = samples.iter().flat_map(|s| labels.iter().map(move |y| iou(s, y))).collect();
    // kuhn_munkres maximises integer weights: IoU scaled to 1e9 keeps 9 digits.
    let weights = Matrix::from_fn(n, n, |(i, j)| (iou_sy[i * m + j % m] * 1e9).round() as i64);
    let (_, assignment) = kuhn_munkres(&weights);
    Ok(assignment.iter().enumerate().map(|(i, &j)| iou_sy[i * m + j % m]).sum::<f64>() / n as f64)
}

/// Mean pairwise distance over distinct pairs (0 for fewer than two masks).
pub fn diversity(masks: &[BitMask]) -> f64 {
    let mut d = Vec::new();
    for i in 0..masks.len() {
        for j in i + 1..masks.len() {
            d.push(distance(&masks[i], &masks[j]));
        }
    }
    mean(&d)
}

/// Per-pixel variance of a Bernoulli with mean p: p(1-p).
pub fn variance(p: &[f32]) -> Vec<f32> {
    p.iter().map(|&q| q * (1.0 - q)).collect()
}

/// Per-pixel binary entropy in bits.
pub fn entropy(p: &[f32]) -> Vec<f32> {
    let h = |q: f32| if q <= 0.0 || q >= 1.0 { 0.0 } else { -q * q.log2() };
    p.iter().map(|&q| h(q) + h(1.0 - q)).collect()
}

/// Expected calibration error accumulators: per bin of predicted probability, the count, the
/// sum of predictions and the sum of annotator frequencies. Add images, then `ece()`.
#[derive(Debug, Clone)]
pub struct Calibration {
    bins: Vec<(u64, f64, f64)>,
}

impl Calibration {
    pub fn new(bins: usize) -> Self {
        Self { bins: vec![(0, 0.0, 0.0); bins.max(1)] }
    }

    pub fn add(&mut self, predicted: &[f32], observed: &[f32]) {
        let k = self.bins.len();
        for (&p, &o) in predicted.iter().zip(observed) {
            let b = ((p * k as f32) as usize).min(k - 1);
            let bin = &mut self.bins[b];
            bin.0 += 1;
            bin.1 += p as f64;
            bin.2 += o as f64;
        }
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            a.0 += b.0;
            a.1 += b.1;
            a.2 += b.2;
        }
    }

    /// sum over bins of (n_b / N) |mean predicted - mean observed|.
    pub fn ece(&self) -> f64 {
        let total: u64 = self.bins.iter().map(|b| b.0).sum();
        if total == 0 {
            return 0.0;
        }
        self.bins.iter().filter(|b| b.0 > 0).map(|&(n, p, o)| (n as f64 / total as f64) * ((p - o) / n as f64).abs()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bm(v: &[u8]) -> BitMask {
        BitMask::new(v)
    }

    #[test]
    fn distance_conventions() {
        let e = bm(&[0, 0, 0, 0]);
        let a = bm(&[1, 1, 0, 0]);
        let b = bm(&[0, 1, 1, 0]);
        assert_eq!(distance(&e, &e), 0.0);
        assert_eq!(distance(&a, &e), 1.0);
        assert!((distance(&a, &b) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(dice(&e, &e), 1.0);
        assert!((dice(&a, &b) - 0.5).abs() < 1e-12);
        assert_eq!(dice(&a, &e), 0.0);
    }

    #[test]
    fn packing_crosses_word_boundaries() {
        let mut x = vec![0u8; 130];
        let mut y = vec![0u8; 130];
        x[63] = 1;
        x[64] = 1;
        x[129] = 1;
        y[64] = 1;
        y[129] = 1;
        assert_eq!(bm(&x).count(), 3);
        assert_eq!(bm(&x).intersection(&bm(&y)), 2);
        assert!((iou(&bm(&x), &bm(&y)) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn entropy_and_variance() {
        let e = entropy(&[0.0, 0.5, 1.0]);
        assert_eq!(e, vec![0.0, 1.0, 0.0]);
        assert_eq!(variance(&[0.5, 1.0]), vec![0.25, 0.0]);
    }

    #[test]
    fn ece_of_perfect_and_off_predictions() {
        let mut c = Calibration::new(10);
        c.add(&[0.05, 0.95], &[0.05, 0.95]);
        assert!(c.ece() < 1e-7);
        let mut c = Calibration::new(10);
        c.add(&[0.9, 0.9], &[0.0, 0.0]);
        assert!((c.ece() - 0.9).abs() < 1e-6);
    }
}
