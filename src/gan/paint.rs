//! New examples from a trained lesion painter: a real lesion's expert masks placed in another
//! real crop where copy-paste would put it, the place erased and painted by the painter. The
//! same examples with the donor's own pixels pasted instead (plain copy-paste) come out beside
//! them, so that the two can be compared on identical masks and places.

use std::path::Path;

use anyhow::{Result, bail};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::networks::Generator;
use super::painter::{composite, hole, input};
use crate::data::Dataset;
use crate::data::augment::paste;
use crate::eval::metrics;
use crate::model::to_host;

/// Donor and place draws per example before generation gives up.
const TRIES: usize = 50;

/// `count` painted examples and their copy-paste twins, from the mask sets and crops of `data`.
pub fn painted(g: &Generator, data: &Dataset, count: usize, seed: u64, device: &Device) -> Result<(Dataset, Dataset)> {
    if data.channels() != 1 {
        bail!("the painter paints one-channel crops, but these have {} channels", data.channels());
    }
    let (h, w, a, hw) = (data.height(), data.width(), data.annotators(), data.height() * data.width());
    let images = data.images.as_standard_layout();
    let images = images.as_slice().expect("standard layout");
    let masks = data.masks.as_standard_layout();
    let masks = masks.as_slice().expect("standard layout");
    let set = |i: usize| -> Vec<Vec<u8>> { (0..a).map(|e| masks[(i * a + e) * hw..(i * a + e + 1) * hw].to_vec()).collect() };
    let donors: Vec<usize> = (0..data.len()).filter(|&i| masks[i * a * hw..(i + 1) * a * hw].iter().any(|&v| v > 0)).collect();
    if donors.is_empty() || data.len() < 2 {
        bail!("painting needs at least two crops and one with a lesion marked; {} crops, {} with a lesion", data.len(), donors.len());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut out_painted, mut out_copied, mut out_masks) = (Vec::new(), Vec::new(), Vec::new());
    let mut series = Vec::new();
    for k in 0..count {
        let Some((target, donor, copied, new_masks)) = (0..TRIES).find_map(|_| {
            let (target, donor) = (rng.gen_range(0..data.len()), donors[rng.gen_range(0..donors.len())]);
            let scale = rng.gen_range(paste::SCALE.0..=paste::SCALE.1);
            // A crop does not receive its own lesion.
            (target != donor).then_some(())?;
            let dm = set(donor);
            let lesion = paste::cut(&images[donor * hw..(donor + 1) * hw], &dm.iter().map(Vec::as_slice).collect::<Vec<_>>(), h, w, scale)?;
            let (mut img, mut m) = (images[target * hw..(target + 1) * hw].to_vec(), set(target));
            paste::paste(&mut rng, &lesion, &mut img, &mut m, h, w)?;
            Some((target, donor, img, m))
        }) else {
            bail!("no plausible place for a lesion after {TRIES} draws (example {k}): the crops' surroundings differ from every lesion's");
        };
        let own = set(target);
        let before = metrics::frequency(&own.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let after = metrics::frequency(&new_masks.iter().map(Vec::as_slice).collect::<Vec<_>>());
        // Only the pasted lesion is painted: a paste never overlaps the crop's own marks.
        let soft: Vec<f32> = after.iter().zip(&before).map(|(&n, &o)| if o > 0.0 { 0.0 } else { n }).collect();
        let holes = hole(&soft, h, w);
        let real: Vec<f32> = images[target * hw..(target + 1) * hw].iter().map(|v| v * 2.0 - 1.0).collect();
        let x = Tensor::from_data(TensorData::new(input(&real, &soft, &holes, h, w), [1, 2, h, w]), device);
        let painted = to_host(composite(g, x, Tensor::from_data(TensorData::new(holes.clone(), [1, 1, h, w]), device)))?;
        // Outside the hole the target's own pixels, exactly (not through [-1, 1] and back).
        let own = &images[target * hw..(target + 1) * hw];
        out_painted
            .extend(painted.iter().zip(&holes).zip(own).map(|((&v, &o), &t)| if o > 0.0 { ((v + 1.0) / 2.0).clamp(0.0, 1.0) } else { t }));
        out_copied.extend(copied);
        out_masks.extend(new_masks.into_iter().flatten());
        series.push(format!("paint.{seed}.{k}.{}.from.{}", data.series[target], data.series[donor]));
    }
    let masks = ndarray::Array4::from_shape_vec((count, a, h, w), out_masks)?;
    let build = |pixels: Vec<f32>, prefix: &str| -> Result<Dataset> {
        let images = ndarray::Array3::from_shape_vec((count, h, w), pixels)?;
        let names = series.iter().map(|s| s.replacen("paint", prefix, 1)).collect();
        let mut ds = Dataset::gray(images, masks.clone(), Some(names), "generated")?;
        ds.synthetic = vec![true; count];
        ds.preprocess = data.preprocess.clone();
        Ok(ds)
    };
    Ok((build(out_painted, "paint")?, build(out_copied, "paste")?))
}

/// Writes `copied` to `path` when given; refuses the path for a GAN that is not a painter.
pub fn save_twin(copied: Option<&Dataset>, path: Option<&Path>) -> Result<()> {
    match (copied, path) {
        (Some(ds), Some(p)) => ds.save(p),
        (None, Some(p)) => bail!("--copy-out {}: only a painter run (gan train --mode painter) makes copy-paste twins", p.display()),
        _ => Ok(()),
    }
}
