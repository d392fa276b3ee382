//! The per-epoch validation pass (posterior loss, GED of prior samples) and the sample figure.

use anyhow::Result;
use burn::prelude::*;

use super::config::TrainConfig;
use super::objective::bce_with_logits;
use super::{epoch_rng, normal};
use crate::data::{AnnotatorChoice, Dataset, batch};
use crate::eval::{figures, metrics};
use crate::inference;
use crate::inference::Sampling;
use crate::model::{Segmenter, to_host};

/// Validation loss (posterior, each annotator in turn) and GED of prior samples vs all annotators.
pub fn validate(
    model: &Segmenter,
    data: &Dataset,
    idx: &[usize],
    tc: &TrainConfig,
    beta: f32,
    device: &Device,
) -> Result<(f64, f64, f64, f64)> {
    let mut rng = epoch_rng(tc.seed, 0, 2);
    let (mut loss, mut rec, mut kl, mut count) = (0f64, 0f64, 0f64, 0usize);
    let a = data.annotators();
    let latent = model.latent_size(data.height(), data.width());
    for chunk in idx.chunks(tc.batch_size.max(1)) {
        for k in 0..a {
            let b = batch::training_batch(data, chunk, AnnotatorChoice::Fixed(k), false, &mut rng, device)?;
            let eps = Tensor::<2>::from_data(TensorData::new(normal(&mut rng, chunk.len() * latent), [chunk.len(), latent]), device);
            let out = model.forward_train(b.images, b.masks.clone(), eps);
            let n = chunk.len() as f64;
            // Every pixel, whatever the training objective: comparable across runs.
            let r = bce_with_logits(out.logits, b.masks).sum() / n;
            let v = to_host(Tensor::cat(vec![r, out.kl.mean()], 0))?;
            loss += (v[0] + beta * v[1]) as f64 * n;
            rec += v[0] as f64 * n;
            kl += v[1] as f64 * n;
            count += chunk.len();
        }
    }
    let c = count.max(1) as f64;
    let sub = data.subset(idx);
    let sampling = Sampling { n: tc.val_samples, seed: tc.seed, batch: tc.batch_size, mean_scales: Vec::new() };
    let samples = inference::sample_images(model, &sub.images, &sampling, device, |_| {})?;
    let (h, w) = (data.height(), data.width());
    let hw = h * w;
    let mut ged = 0f64;
    for i in 0..sub.len() {
        let s = samples.masks.index_axis(ndarray::Axis(0), i);
        let s = s.as_slice().expect("standard layout");
        let y = sub.masks.index_axis(ndarray::Axis(0), i);
        let y = y.as_slice().expect("standard layout");
        let ss: Vec<&[u8]> = s.chunks(hw).collect();
        let ys: Vec<&[u8]> = y.chunks(hw).collect();
        ged += metrics::ged_squared(&ss, &ys);
    }
    Ok((loss / c, rec / c, kl / c, ged / sub.len().max(1) as f64))
}

/// The seed's figure for images `idx`: CT, annotators, `n` prior samples.
#[allow(clippy::too_many_arguments)]
pub fn figure(
    model: &Segmenter,
    data: &Dataset,
    idx: &[usize],
    n: usize,
    seed: u64,
    device: &Device,
    title: &str,
) -> Result<image::RgbImage> {
    let sub = data.subset(idx);
    let sampling = Sampling { n: n.max(1), seed, batch: 8, mean_scales: Vec::new() };
    let samples = inference::sample_images(model, &sub.images, &sampling, device, |_| {})?;
    Ok(render_figure(&sub, &samples.masks, n, title))
}

/// Draws the grid from a dataset and sampled masks [N,n,H,W].
pub fn render_figure(sub: &Dataset, samples: &ndarray::Array4<u8>, n: usize, title: &str) -> image::RgbImage {
    let (h, w) = (sub.height(), sub.width());
    let hw = h * w;
    let images = sub.display_images().as_standard_layout().into_owned();
    let masks = sub.masks.as_standard_layout();
    let samples = samples.as_standard_layout();
    let img = images.as_slice().expect("standard layout");
    let msk = masks.as_slice().expect("standard layout");
    let smp = samples.as_slice().expect("standard layout");
    let a = sub.annotators();
    let ns = samples.shape()[1];
    let columns: Vec<figures::Column<'_>> = (0..sub.len())
        .map(|i| figures::Column {
            image: &img[i * hw..(i + 1) * hw],
            labels: (0..a).map(|k| &msk[(i * a + k) * hw..(i * a + k + 1) * hw]).collect(),
            samples: (0..ns.min(n)).map(|s| &smp[(i * ns + s) * hw..(i * ns + s + 1) * hw]).collect(),
            heat: Vec::new(),
        })
        .collect();
    figures::sample_grid(&columns, h, w, title, &figures::GridOptions::default())
}
