//! Lesion copy-paste: a real lesion (the image under any expert's mask, with every expert's
//! mask) cut from one training crop and pasted into another at a place whose surroundings
//! look like the donor's own (lung parenchyma for a lung nodule, brain for a brain lesion),
//! blended at the border so that no seam teaches the model where pastes are.

use rand::Rng;

use super::color::blur;
use crate::data::resample;

/// The lesion is rescaled by a factor drawn from this range.
pub const SCALE: (f32, f32) = (0.75, 1.25);
/// Pixels of surroundings cut with the lesion: the blend zone and the context compared.
pub const MARGIN: usize = 4;
/// A place is plausible when the mean intensity of its surroundings is within this of the
/// donor's (intensities are in [0, 1]).
pub const TOLERANCE: f32 = 0.08;
/// Places tried before the paste is given up for this example.
pub const TRIES: usize = 30;

/// A lesion cut from a crop, ready to paste.
#[derive(Debug, Clone)]
pub struct Lesion {
    pub height: usize,
    pub width: usize,
    /// The cut region's planes (one per input channel), each height x width.
    img: Vec<f32>,
    /// Each expert's mask over the cut region.
    masks: Vec<Vec<u8>>,
    /// Blend weight: 1 on the lesion, falling to 0 over about two pixels outside it.
    alpha: Vec<f32>,
    /// Mean intensity (over every plane) of the cut region outside every expert's mask.
    surround: f32,
}

/// Cuts the lesion of `img` (C planes of h x w; every pixel any expert marked, with a margin)
/// rescaled by `scale`; `None` for a crop no expert marked.
pub fn cut(img: &[f32], masks: &[&[u8]], h: usize, w: usize, scale: f32) -> Option<Lesion> {
    let marked: Vec<usize> = (0..h * w).filter(|&j| masks.iter().any(|m| m[j] > 0)).collect();
    let (y0, y1) = (marked.iter().map(|j| j / w).min()?, marked.iter().map(|j| j / w).max()?);
    let (x0, x1) = (marked.iter().map(|j| j % w).min()?, marked.iter().map(|j| j % w).max()?);
    let (y0, x0) = (y0.saturating_sub(MARGIN), x0.saturating_sub(MARGIN));
    let (y1, x1) = ((y1 + MARGIN).min(h - 1), (x1 + MARGIN).min(w - 1));
    let (bh, bw) = (y1 - y0 + 1, x1 - x0 + 1);
    let (oh, ow) = (((bh as f32 * scale).round() as usize).max(1), ((bw as f32 * scale).round() as usize).max(1));
    // The box, resampled bilinearly over the same extent; each mask thresholded at one half.
    let box_of = |src: &dyn Fn(usize) -> f32| -> Vec<f32> {
        let region: Vec<f32> = (0..bh * bw).map(|j| src((y0 + j / bw) * w + x0 + j % bw)).collect();
        resample::linear(&region, (bh, bw), (oh, ow))
    };
    let region: Vec<f32> = img.chunks(h * w).flat_map(|plane| box_of(&|j| plane[j])).collect();
    let cut_masks: Vec<Vec<u8>> =
        masks.iter().map(|m| box_of(&|j| m[j] as f32).into_iter().map(|v| u8::from(v >= 0.5)).collect()).collect();
    let core: Vec<f32> = (0..oh * ow).map(|j| if cut_masks.iter().any(|m| m[j] > 0) { 1.0 } else { 0.0 }).collect();
    if core.iter().all(|&v| v == 0.0) {
        return None;
    }
    let mut alpha = dilate(&core, oh, ow);
    blur(&mut alpha, oh, ow, 1.0);
    alpha.iter_mut().zip(&core).for_each(|(a, c)| *a = a.max(*c).min(1.0));
    let outside: Vec<f32> = region.iter().zip(core.iter().cycle()).filter(|(_, c)| **c == 0.0).map(|(v, _)| *v).collect();
    let surround = if outside.is_empty() { f32::NAN } else { outside.iter().sum::<f32>() / outside.len() as f32 };
    Some(Lesion { height: oh, width: ow, img: region, masks: cut_masks, alpha, surround })
}

/// Pastes `lesion` into `img` (as many planes of h x w as the lesion has) and every expert's
/// mask (h x w) at a plausible place: no expert marked anything under it, and its surroundings
/// are within [`TOLERANCE`] of the donor's.
/// Returns where (row, column of the corner), or `None` when no place was found.
pub fn paste<R: Rng>(rng: &mut R, lesion: &Lesion, img: &mut [f32], masks: &mut [Vec<u8>], h: usize, w: usize) -> Option<(usize, usize)> {
    let (lh, lw) = (lesion.height, lesion.width);
    let planes = lesion.img.len() / (lh * lw);
    if lh > h || lw > w || masks.len() != lesion.masks.len() || !lesion.surround.is_finite() || img.len() != planes * h * w {
        return None;
    }
    for _ in 0..TRIES {
        let (oy, ox) = (rng.gen_range(0..=h - lh), rng.gen_range(0..=w - lw));
        let at = |j: usize| (oy + j / lw) * w + ox + j % lw;
        let overlaps = (0..lh * lw).any(|j| lesion.alpha[j] > 0.0 && masks.iter().any(|m| m[at(j)] > 0));
        if overlaps {
            continue;
        }
        let ring: Vec<usize> = (0..lh * lw).filter(|&j| lesion.alpha[j] < 1.0).collect();
        let sum: f32 = img.chunks(h * w).map(|plane| ring.iter().map(|&j| plane[at(j)]).sum::<f32>()).sum();
        if ring.is_empty() || (sum / (ring.len() * planes) as f32 - lesion.surround).abs() > TOLERANCE {
            continue;
        }
        for j in 0..lh * lw {
            let (a, p) = (lesion.alpha[j], at(j));
            for (plane, cut) in img.chunks_mut(h * w).zip(lesion.img.chunks(lh * lw)) {
                plane[p] = a * cut[j] + (1.0 - a) * plane[p];
            }
            for (m, lm) in masks.iter_mut().zip(&lesion.masks) {
                m[p] = m[p].max(lm[j]);
            }
        }
        return Some((oy, ox));
    }
    None
}

/// A 0/1 map grown by one pixel (8-neighbourhood).
fn dilate(core: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = core.to_vec();
    for y in 0..h {
        for x in 0..w {
            if core[y * w + x] == 0.0 {
                continue;
            }
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    out[yy * w + xx] = 1.0;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A 32x32 crop at 0.2 with a bright disc at (cy, cx) that experts 0 and 1 of 3 marked.
    fn crop(cy: f32, cx: f32) -> (Vec<f32>, Vec<Vec<u8>>) {
        let (h, w) = (32, 32);
        let inside = |j: usize| ((j / w) as f32 - cy).hypot((j % w) as f32 - cx) <= 3.0;
        let img = (0..h * w).map(|j| if inside(j) { 0.9 } else { 0.2 }).collect();
        let m: Vec<u8> = (0..h * w).map(|j| u8::from(inside(j))).collect();
        (img, vec![m.clone(), m, vec![0; h * w]])
    }

    #[test]
    fn a_pasted_lesion_keeps_every_experts_mask_and_its_intensity() {
        let (dimg, dmasks) = crop(8.0, 8.0);
        let refs: Vec<&[u8]> = dmasks.iter().map(Vec::as_slice).collect();
        let lesion = cut(&dimg, &refs, 32, 32, 1.0).unwrap();
        assert_eq!((lesion.height, lesion.width), (7 + 2 * MARGIN, 7 + 2 * MARGIN));
        let (mut img, mut masks) = (vec![0.2; 32 * 32], vec![vec![0u8; 32 * 32]; 3]);
        let mut rng = StdRng::seed_from_u64(0);
        let (oy, ox) = paste(&mut rng, &lesion, &mut img, &mut masks, 32, 32).expect("a flat crop has room");
        let centre = (oy + MARGIN + 3) * 32 + ox + MARGIN + 3;
        assert_eq!((masks[0][centre], masks[1][centre], masks[2][centre]), (1, 1, 0));
        assert_eq!(masks[0].iter().map(|&v| v as usize).sum::<usize>(), dmasks[0].iter().map(|&v| v as usize).sum::<usize>());
        assert!((img[centre] - 0.9).abs() < 1e-6);
        // Blended: pixels just outside the mask lie between background and lesion.
        let edge = (oy + MARGIN + 3) * 32 + ox + MARGIN + 7;
        assert!(masks[0][edge] == 0 && img[edge] > 0.2 && img[edge] < 0.9, "{}", img[edge]);
    }

    #[test]
    fn no_paste_over_a_lesion_or_into_unlike_surroundings() {
        let (dimg, dmasks) = crop(8.0, 8.0);
        let refs: Vec<&[u8]> = dmasks.iter().map(Vec::as_slice).collect();
        let lesion = cut(&dimg, &refs, 32, 32, 1.0).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        // Bone-bright surroundings everywhere: nowhere plausible.
        let (mut bright, mut masks) = (vec![0.8; 32 * 32], vec![vec![0u8; 32 * 32]; 3]);
        assert!(paste(&mut rng, &lesion, &mut bright, &mut masks, 32, 32).is_none());
        assert!(bright.iter().all(|&v| v == 0.8));
        // Marked everywhere: no room.
        let (mut img, mut full) = (vec![0.2; 32 * 32], vec![vec![1u8; 32 * 32]; 3]);
        assert!(paste(&mut rng, &lesion, &mut img, &mut full, 32, 32).is_none());
        assert!(cut(&dimg, &[&vec![0u8; 32 * 32][..]], 32, 32, 1.0).is_none());
    }

    #[test]
    fn every_plane_of_a_lesion_is_pasted_with_its_own_values() {
        let (dimg, dmasks) = crop(8.0, 8.0);
        // A second plane: the first inverted, as another window of the same slice might be.
        let two: Vec<f32> = dimg.iter().copied().chain(dimg.iter().map(|v| 1.0 - v)).collect();
        let refs: Vec<&[u8]> = dmasks.iter().map(Vec::as_slice).collect();
        let lesion = cut(&two, &refs, 32, 32, 1.0).unwrap();
        let (mut img, mut masks) = ([vec![0.2; 32 * 32], vec![0.8; 32 * 32]].concat(), vec![vec![0u8; 32 * 32]; 3]);
        let mut rng = StdRng::seed_from_u64(0);
        let (oy, ox) = paste(&mut rng, &lesion, &mut img, &mut masks, 32, 32).expect("flat planes have room");
        let centre = (oy + MARGIN + 3) * 32 + ox + MARGIN + 3;
        assert!((img[centre] - 0.9).abs() < 1e-6 && (img[32 * 32 + centre] - 0.1).abs() < 1e-6);
        assert_eq!(masks[0][centre], 1);
        // A one-plane crop does not take a two-plane lesion.
        assert!(paste(&mut rng, &lesion, &mut vec![0.2; 32 * 32], &mut masks, 32, 32).is_none());
    }

    #[test]
    fn scaling_changes_the_area_by_its_square() {
        let (dimg, dmasks) = crop(16.0, 16.0);
        let refs: Vec<&[u8]> = dmasks.iter().map(Vec::as_slice).collect();
        let area = |l: &Lesion| l.masks[0].iter().map(|&v| v as f32).sum::<f32>();
        let (one, big) = (cut(&dimg, &refs, 32, 32, 1.0).unwrap(), cut(&dimg, &refs, 32, 32, 1.25).unwrap());
        let ratio = area(&big) / area(&one);
        assert!((ratio - 1.5625).abs() < 0.3, "area ratio {ratio}");
    }
}
