//! Statistics of several experts' masks of one image: the majority vote and the per-pixel
//! frequency (the batches, the metrics and the CycleGAN all take them).

/// Pixel-wise majority of the labels (ties count as lesion, as in training).
pub fn majority(labels: &[&[u8]]) -> Vec<u8> {
    let m = labels.len() as u32;
    let len = labels.first().map_or(0, |l| l.len());
    (0..len)
        .map(|p| {
            let votes: u32 = labels.iter().map(|l| (l[p] != 0) as u32).sum();
            (votes > 0 && 2 * votes >= m) as u8
        })
        .collect()
}

/// Per-pixel frequency of value 1 over masks, in [0,1].
pub fn frequency(masks: &[&[u8]]) -> Vec<f32> {
    let len = masks.first().map_or(0, |l| l.len());
    let n = masks.len().max(1) as f32;
    (0..len).map(|p| masks.iter().map(|m| (m[p] != 0) as u32).sum::<u32>() as f32 / n).collect()
}
