//! Contrast-limited adaptive histogram equalisation (Zuiderveld 1994) for dark, low-contrast
//! scans: per-tile histograms clipped at `clip` times the mean bin count, excess spread evenly,
//! and tile mappings blended bilinearly so no tile edges show.

const BINS: usize = 256;

/// Applies CLAHE to an image in [0, 1] (h x w, row-major) with 8 x 8 tiles.
pub fn clahe(img: &[f32], h: usize, w: usize, clip: f32) -> Vec<f32> {
    let (ty, tx) = (8.min(h).max(1), 8.min(w).max(1));
    let (th, tw) = (h.div_ceil(ty), w.div_ceil(tx));
    let bin = |v: f32| ((v.clamp(0.0, 1.0) * (BINS - 1) as f32).round()) as usize;
    // One cumulative mapping per tile.
    let mut maps = vec![[0f32; BINS]; ty * tx];
    for j in 0..ty {
        for i in 0..tx {
            let mut hist = [0u32; BINS];
            let (y0, y1, x0, x1) = (j * th, ((j + 1) * th).min(h), i * tw, ((i + 1) * tw).min(w));
            for y in y0..y1 {
                for x in x0..x1 {
                    hist[bin(img[y * w + x])] += 1;
                }
            }
            let n = ((y1.saturating_sub(y0)) * (x1.saturating_sub(x0))).max(1) as f32;
            let limit = (clip.max(1.0) * n / BINS as f32).max(1.0) as u32;
            let mut excess = 0u32;
            for c in hist.iter_mut() {
                if *c > limit {
                    excess += *c - limit;
                    *c = limit;
                }
            }
            let add = excess as f32 / BINS as f32;
            let mut acc = 0f32;
            for (k, c) in hist.iter().enumerate() {
                acc += *c as f32 + add;
                maps[j * tx + i][k] = acc / n;
            }
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        // Tile-centre coordinates for bilinear blending.
        let fy = ((y as f32 + 0.5) / th as f32 - 0.5).clamp(0.0, (ty - 1) as f32);
        let (j0, wy) = (fy.floor() as usize, fy - fy.floor());
        let j1 = (j0 + 1).min(ty - 1);
        for x in 0..w {
            let fx = ((x as f32 + 0.5) / tw as f32 - 0.5).clamp(0.0, (tx - 1) as f32);
            let (i0, wx) = (fx.floor() as usize, fx - fx.floor());
            let i1 = (i0 + 1).min(tx - 1);
            let b = bin(img[y * w + x]);
            let m = |j: usize, i: usize| maps[j * tx + i][b];
            let top = m(j0, i0) * (1.0 - wx) + m(j0, i1) * wx;
            let bottom = m(j1, i0) * (1.0 - wx) + m(j1, i1) * wx;
            out[y * w + x] = (top * (1.0 - wy) + bottom * wy).clamp(0.0, 1.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_local_contrast_of_a_faint_lesion() {
        let (h, w) = (128, 128);
        let inside = |p: usize| (56..72).contains(&(p / w)) && (56..72).contains(&(p % w));
        let img: Vec<f32> = (0..h * w).map(|p| if inside(p) { 0.12 } else { 0.10 }).collect();
        let out = clahe(&img, h, w, 4.0);
        let mean = |v: &[f32], want: bool| {
            let sel: Vec<f32> = (0..h * w).filter(|&p| inside(p) == want).map(|p| v[p]).collect();
            sel.iter().sum::<f32>() / sel.len() as f32
        };
        let before = mean(&img, true) - mean(&img, false);
        let after = mean(&out, true) - mean(&out, false);
        assert!(after > 1.3 * before, "lesion contrast {before} -> {after}");
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        // Within one tile's mapping, brighter stays brighter.
        let mut two = vec![0.1f32; h * w];
        two[5 * w + 5] = 0.3;
        let r = clahe(&two, h, w, 4.0);
        assert!(r[5 * w + 5] > r[5 * w + 6]);
    }

    #[test]
    fn constant_image_stays_constant() {
        let out = clahe(&vec![0.3; 40 * 24], 40, 24, 2.0);
        assert!(out.iter().all(|&v| (v - out[0]).abs() < 1e-6));
    }
}
