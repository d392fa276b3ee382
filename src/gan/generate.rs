//! New examples from a trained GAN: deformed training mask sets translated to CT by a
//! mask-to-CT CycleGAN, or lesions painted into real crops by a painter (`paint.rs`); and the
//! real-versus-generated figure.

use std::path::Path;

use anyhow::{Result, bail};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::networks::Generator;
use super::train::{GanMode, load_generator, mean_masks, tensor};
use crate::data::Dataset;
use crate::eval::{figures, metrics};
use crate::model::to_host;

/// Real crops and generated ones side by side: CT and the annotators' mean mask for the first
/// `k` examples of each dataset.
pub fn side_by_side(real: &Dataset, synthetic: &Dataset, k: usize) -> Result<image::RgbImage> {
    if (real.height(), real.width()) != (synthetic.height(), synthetic.width()) {
        bail!("real crops are {}x{} but generated ones {}x{}", real.height(), real.width(), synthetic.height(), synthetic.width());
    }
    let (h, w) = (real.height(), real.width());
    let k = k.min(real.len()).min(synthetic.len()).max(1);
    let ct = |d: &Dataset| {
        (0..k).map(|i| d.display_images().index_axis(ndarray::Axis(0), i).iter().copied().collect()).collect::<Vec<Vec<f32>>>()
    };
    let rows = vec![
        ("real CT".to_string(), ct(real)),
        ("real masks".to_string(), mean_masks(real, k)),
        ("gen. CT".to_string(), ct(synthetic)),
        ("gen. masks".to_string(), mean_masks(synthetic, k)),
    ];
    Ok(figures::image_rows(&rows, h, w, "real crops (top) and generated examples (bottom); masks: annotators' mean"))
}

/// The training masks' random deformation for new examples: elastic displacement, rotation,
/// scaling and placement, applied identically to every annotator's mask (nearest neighbour).
pub fn deform_masks<R: Rng>(masks: &[Vec<u8>], h: usize, w: usize, rng: &mut R) -> Vec<Vec<u8>> {
    let angle = rng.gen_range(0.0..std::f32::consts::TAU);
    let scale = rng.gen_range(0.8..1.25);
    let (ty, tx) = (rng.gen_range(-(h as f32) / 8.0..h as f32 / 8.0), rng.gen_range(-(w as f32) / 8.0..w as f32 / 8.0));
    // Elastic field: random offsets on a 4x4 grid, bilinearly interpolated.
    let g = 4usize;
    let amp = (h.min(w) as f32) / 24.0;
    let grid: Vec<(f32, f32)> = (0..g * g).map(|_| (rng.gen_range(-amp..amp), rng.gen_range(-amp..amp))).collect();
    let field = |y: f32, x: f32| {
        let fy = (y / (h - 1).max(1) as f32 * (g - 1) as f32).clamp(0.0, (g - 1) as f32);
        let fx = (x / (w - 1).max(1) as f32 * (g - 1) as f32).clamp(0.0, (g - 1) as f32);
        let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(g - 1), (x0 + 1).min(g - 1));
        let (wy, wx) = (fy - y0 as f32, fx - x0 as f32);
        let at = |j: usize, i: usize| grid[j * g + i];
        let lerp = |p: (f32, f32), q: (f32, f32), t: f32| (p.0 + (q.0 - p.0) * t, p.1 + (q.1 - p.1) * t);
        lerp(lerp(at(y0, x0), at(y0, x1), wx), lerp(at(y1, x0), at(y1, x1), wx), wy)
    };
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (cs, sn) = (angle.cos(), angle.sin());
    masks
        .iter()
        .map(|m| {
            (0..h * w)
                .map(|p| {
                    let (y, x) = ((p / w) as f32, (p % w) as f32);
                    let (dy, dx) = field(y, x);
                    // Inverse map: output pixel -> source pixel.
                    let (yy, xx) = ((y + dy - cy - ty) / scale, (x + dx - cx - tx) / scale);
                    let (sy, sx) = (cs * yy + sn * xx + cy, -sn * yy + cs * xx + cx);
                    let (iy, ix) = (sy.round(), sx.round());
                    if iy < 0.0 || ix < 0.0 || iy >= h as f32 || ix >= w as f32 { 0 } else { m[iy as usize * w + ix as usize] }
                })
                .collect()
        })
        .collect()
}

/// K new examples from `data` (its name and contents): for a mask2ct GAN, its deformed mask sets
/// translated to CT by the A->B generator; for a painter, lesions painted into its crops, with
/// their copy-paste twins. They carry the GAN's preprocessing record, which `data`'s must match
/// (unless `allow_mismatch`).
pub fn generate(
    gan_dir: &Path,
    data: (&Path, &Dataset),
    count: usize,
    seed: u64,
    allow_mismatch: bool,
    device: &Device,
) -> Result<(Dataset, Option<Dataset>)> {
    let (data_name, data) = data;
    let (cfg, g) = load_generator(gan_dir, device)?;
    if cfg.mode == GanMode::Unpaired {
        bail!("{} was trained in unpaired mode; generating examples needs a mask2ct or painter GAN", gan_dir.display());
    }
    crate::data::preprocess::check_match(
        (&format!("the GAN {}", gan_dir.display()), cfg.preprocess.as_ref()),
        (&data_name.display().to_string(), data.preprocess.as_ref()),
        allow_mismatch,
    )?;
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let (h, w, a) = (data.height(), data.width(), data.annotators());
    Generator::check_size(h, w)?;
    if cfg.mode == GanMode::Painter {
        let (painted, copied) = super::paint::painted(&g, data, count, seed, device)?;
        return Ok((painted, Some(copied)));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let masks = data.masks.as_standard_layout();
    let m = masks.as_slice().expect("standard layout");
    let hw = h * w;
    let mut images = Vec::with_capacity(count * hw);
    let mut out_masks = Vec::with_capacity(count * a * hw);
    let mut series = Vec::with_capacity(count);
    for k in 0..count {
        let i = rng.gen_range(0..data.len());
        let set: Vec<Vec<u8>> = (0..a).map(|j| m[(i * a + j) * hw..(i * a + j + 1) * hw].to_vec()).collect();
        let new = deform_masks(&set, h, w, &mut rng);
        // The generator's A domain: the annotators' mean mask in [-1, 1], as in training.
        let soft: Vec<f32> =
            metrics::frequency(&new.iter().map(Vec::as_slice).collect::<Vec<_>>()).into_iter().map(|v| v * 2.0 - 1.0).collect();
        let ct = to_host(g.forward(tensor(&soft, h, w, device)))?;
        images.extend(ct.into_iter().map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0)));
        for n in new {
            out_masks.extend(n);
        }
        series.push(format!("gan.{seed}.{k}.from.{}", data.series[i]));
    }
    let images = ndarray::Array3::from_shape_vec((count, h, w), images)?;
    let out_masks = ndarray::Array4::from_shape_vec((count, a, h, w), out_masks)?;
    let mut ds = Dataset::gray(images, out_masks, Some(series), "generated")?;
    ds.synthetic = vec![true; count];
    // The images are the generator's: they look like the CT it learnt from.
    ds.preprocess = cfg.preprocess.clone();
    Ok((ds, None))
}

/// `apunet gan generate`: `count` examples from the GAN in `gan_dir` and `data`'s mask sets
/// (seeded), saved to `out` with the real-versus-generated figure beside it (returned); a
/// painter's copy-paste twins go to `copy_out`.
pub fn generate_to_file(
    gan_dir: &Path,
    data: &Path,
    (out, copy_out): (&Path, Option<&Path>),
    (count, seed): (usize, u64),
    allow_mismatch: bool,
    device: &Device,
) -> Result<(Dataset, std::path::PathBuf)> {
    if copy_out == Some(out) {
        bail!("--copy-out and --out are the same file, {}: the twins would overwrite the painted examples", out.display());
    }
    let real = Dataset::load(data)?;
    let (ds, copied) = generate(gan_dir, (data, &real), count, seed, allow_mismatch, device)?;
    super::paint::save_twin(copied.as_ref(), copy_out)?;
    ds.save(out)?;
    let fig = out.with_extension("png");
    figures::save_png(&side_by_side(&real, &ds, 8)?, &fig)?;
    Ok((ds, fig))
}
