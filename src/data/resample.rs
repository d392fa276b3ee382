//! Resampling a slice to another in-plane pixel spacing: bilinear for CT values, by area for
//! masks (each new pixel marked when at least half of its footprint was), so that a lesion
//! keeps its area in mm² whichever way the grid changes.

/// Pixels along an axis of `n` pixels at `from` mm when resampled to `to` mm.
pub fn resampled_len(n: usize, from: f64, to: f64) -> usize {
    ((n as f64 * from / to).round() as usize).max(1)
}

/// `values` (h x w, row-major) sampled bilinearly at the centres of an nh x nw grid over the
/// same extent; the border is extended.
pub fn linear(values: &[f32], (h, w): (usize, usize), (nh, nw): (usize, usize)) -> Vec<f32> {
    let axis = |n: usize, m: usize| -> Vec<(usize, usize, f32)> {
        (0..m)
            .map(|i| {
                let s = ((i as f64 + 0.5) * n as f64 / m as f64 - 0.5).clamp(0.0, (n - 1) as f64);
                let a = s.floor() as usize;
                (a, (a + 1).min(n - 1), (s - a as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, nh), axis(w, nw));
    let mut out = Vec::with_capacity(nh * nw);
    for &(y0, y1, ty) in &ys {
        for &(x0, x1, tx) in &xs {
            let top = values[y0 * w + x0] * (1.0 - tx) + values[y0 * w + x1] * tx;
            let bottom = values[y1 * w + x0] * (1.0 - tx) + values[y1 * w + x1] * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

/// A 0/1 mask (h x w) on an nh x nw grid over the same extent: the marked share of each new
/// pixel's footprint, marked from one half.
pub fn mask_area(mask: &[u8], (h, w): (usize, usize), (nh, nw): (usize, usize)) -> Vec<u8> {
    let (wy, wx) = (overlaps(h, nh), overlaps(w, nw));
    // Rows first: [nh, w] shares, then columns.
    let mut rows = vec![0f64; nh * w];
    for (oy, ws) in wy.iter().enumerate() {
        for &(y, f) in ws {
            for x in 0..w {
                rows[oy * w + x] += f * mask[y * w + x] as f64;
            }
        }
    }
    let mut out = Vec::with_capacity(nh * nw);
    for oy in 0..nh {
        for ws in &wx {
            let share: f64 = ws.iter().map(|&(x, f)| f * rows[oy * w + x]).sum();
            out.push(u8::from(share >= 0.5));
        }
    }
    out
}

/// For each of `m` new pixels along an axis of `n`, the old pixels its footprint covers and the
/// share of the footprint each covers.
fn overlaps(n: usize, m: usize) -> Vec<Vec<(usize, f64)>> {
    let step = n as f64 / m as f64;
    (0..m)
        .map(|i| {
            let (a, b) = (i as f64 * step, (i + 1) as f64 * step);
            (a.floor() as usize..(b.ceil() as usize).min(n))
                .map(|j| (j, ((b.min(j as f64 + 1.0) - a.max(j as f64)) / step).max(0.0)))
                .filter(|&(_, f)| f > 0.0)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc(n: usize, r: f64) -> Vec<u8> {
        let c = (n as f64 - 1.0) / 2.0;
        (0..n * n).map(|j| u8::from(((j / n) as f64 - c).hypot((j % n) as f64 - c) <= r)).collect()
    }

    #[test]
    fn a_mask_keeps_its_area_in_mm2_both_ways() {
        // 128 px at 0.7 mm to 0.5 mm (179 px) and back.
        let m = disc(128, 20.0);
        let mm2 = |v: &[u8], s: f64| v.iter().map(|&x| x as f64).sum::<f64>() * s * s;
        let n = resampled_len(128, 0.7, 0.5);
        assert_eq!(n, 179);
        let fine = mask_area(&m, (128, 128), (n, n));
        let back = mask_area(&fine, (n, n), (128, 128));
        let (a, b, c) = (mm2(&m, 0.7), mm2(&fine, 0.7 * 128.0 / n as f64), mm2(&back, 0.7));
        assert!((b / a - 1.0).abs() < 0.02, "{a} mm² became {b}");
        assert!((c / a - 1.0).abs() < 0.02, "{a} mm² came back as {c}");
    }

    #[test]
    fn linear_resampling_keeps_a_ramp_and_constants() {
        let (h, w) = (20, 30);
        let ramp: Vec<f32> = (0..h * w).map(|j| (j % w) as f32 * 2.0 + 5.0).collect();
        let out = linear(&ramp, (h, w), (10, 45));
        // New column centres map to (x + 0.5) * 30 / 45 - 0.5 in old pixels.
        for x in 2..43 {
            let s = (x as f32 + 0.5) * 30.0 / 45.0 - 0.5;
            assert!((out[3 * 45 + x] - (s * 2.0 + 5.0)).abs() < 1e-4);
        }
        assert!(linear(&[7.0; 12], (3, 4), (5, 7)).iter().all(|&v| (v - 7.0).abs() < 1e-6));
    }
}
