//! Metrics over binary masks, with the field's definitions (PHiSeg / MoSE on LIDC).

/// 1 - IoU, with d = 0 when both masks are empty and IoU = 0 when exactly one is.
pub fn iou_distance(a: &[u8], b: &[u8]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x != 0, y != 0);
        inter += (x && y) as u64;
        union += (x || y) as u64;
    }
    if union == 0 { 0.0 } else { 1.0 - inter as f64 / union as f64 }
}

/// Squared generalized energy distance for one image:
/// 2/(NM) sum d(s,y) - 1/N^2 sum d(s,s') - 1/M^2 sum d(y,y'), self-pairs included.
pub fn ged_squared(samples: &[&[u8]], labels: &[&[u8]]) -> f64 {
    let (n, m) = (samples.len() as f64, labels.len() as f64);
    let cross: f64 = samples.iter().flat_map(|s| labels.iter().map(move |y| iou_distance(s, y))).sum();
    let ss: f64 = samples.iter().flat_map(|s| samples.iter().map(move |t| iou_distance(s, t))).sum();
    let yy: f64 = labels.iter().flat_map(|y| labels.iter().map(move |z| iou_distance(y, z))).sum();
    2.0 * cross / (n * m) - ss / (n * n) - yy / (m * m)
}
