use crate::common;

use apunet::data::Dataset;
use apunet::data::scan::{self, Geometry, Preprocess, read_scan};
use apunet::data::synth::{SynthConfig, generate};
use apunet::inference::{Sampling, image_eps, sample_images};
use apunet::jobs::predict::{PredictRequest, predict_files};
use apunet::jobs::sample::RunSampling as SamplingArgs;
use apunet::model::{ProbUNet, Segmenter, to_host};
use apunet::predict::{Windows, gaussian_weights, image_latents, image_prior, predict_image, sliding_window, window_starts};
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest};
use burn::prelude::*;
use nifti::{IntoNdArray, NiftiObject, ReaderOptions};

#[test]
fn sliding_windows_cover_a_1000_pixel_image_without_seams() {
    let (h, w, p, n) = (1000, 1000, 128, 2);
    let img: Vec<f32> = (0..h * w).map(|q| ((q % w) as f32 * 0.001 + (q / w) as f32 * 0.0003) % 1.0).collect();
    // A constant model gives a constant map: no seams where patches meet.
    let c = sliding_window(&img, h, w, p, p, n, 0.5, 8, |_, b| Ok(vec![0.3; b * n * p * p]), |_| {}).unwrap();
    assert_eq!(c.patches, window_starts(h, p, 0.5).len() * window_starts(w, p, 0.5).len());
    assert!(c.probs.iter().flatten().all(|&v| (v - 0.3).abs() < 1e-5));
    // An identity model returns the image itself: every pixel covered, weights normalised.
    let identity = |patches: &[f32], _b: usize| {
        let mut out = Vec::with_capacity(patches.len() * n);
        for chunk in patches.chunks(p * p) {
            for _ in 0..n {
                out.extend_from_slice(chunk);
            }
        }
        Ok(out)
    };
    let id = sliding_window(&img, h, w, p, p, n, 0.5, 8, identity, |_| {}).unwrap();
    let err = id.probs[1].iter().zip(&img).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-4, "max error {err}");
    // Smaller than a patch: zero-padded, cropped back.
    let small = sliding_window(&img[..50 * 30], 50, 30, 64, 64, 1, 0.5, 2, |_, b| Ok(vec![1.0; b * 64 * 64]), |_| {}).unwrap();
    assert_eq!((small.height, small.width, small.mean.len()), (50, 30, 1500));
    assert!(sliding_window(&img, h, w, p, p, n, 1.0, 8, |_, b| Ok(vec![0.0; b]), |_| {}).is_err());
}

#[test]
fn nifti_round_trip_keeps_values_and_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.nii.gz");
    let (w, h, d) = (6, 4, 3);
    let header = nifti::NiftiHeader {
        pixdim: [1.0, 0.7, 0.8, 2.5, 1.0, 1.0, 1.0, 1.0],
        srow_x: [-0.7, 0.0, 0.0, 10.0],
        srow_y: [0.0, -0.8, 0.0, 20.0],
        srow_z: [0.0, 0.0, 2.5, -30.0],
        sform_code: 1,
        ..Default::default()
    };
    let hu: Vec<Vec<f32>> = (0..d).map(|z| (0..h * w).map(|q| -1000.0 + (z * 100 + q) as f32).collect()).collect();
    let out_header = scan::output_header(&Geometry::Nifti(Box::new(header.clone())), w, h, d, 1);
    scan::write_nifti(&path, &out_header, std::slice::from_ref(&hu), h, w).unwrap();
    let s = read_scan(&path).unwrap();
    assert_eq!(s.slices.len(), d);
    assert_eq!(s.slices[0].units, scan::Units::Hu);
    for z in 0..d {
        assert_eq!((s.slices[z].height, s.slices[z].width), (h, w));
        assert_eq!(s.slices[z].values, hu[z]);
    }
    match &s.geometry {
        Geometry::Nifti(g) => {
            assert_eq!(g.srow_x, header.srow_x);
            assert_eq!(g.srow_z, header.srow_z);
            assert_eq!(g.pixdim[1..4], header.pixdim[1..4]);
        }
        other => panic!("geometry {other:?}"),
    }
}

#[test]
fn dicom_geometry_becomes_a_nifti_affine() {
    let s = read_scan(&common::shared_data().join("ct/CT_small.dcm")).unwrap();
    let Geometry::Dicom(series) = &s.geometry else { panic!("expected DICOM geometry") };
    let d = &series[0];
    let h = scan::output_header(&s.geometry, 128, 128, 1, 1);
    let spacing = d.pixel_spacing.expect("CT_small has PixelSpacing");
    assert_eq!(h.sform_code, 1);
    assert!((h.pixdim[1] as f64 - spacing[1]).abs() < 1e-6);
    let p = d.position.expect("CT_small has ImagePositionPatient");
    let o = d.orientation.expect("CT_small has ImageOrientationPatient");
    // LPS to RAS: x and y flip sign; the columns of the affine are the orientation times spacing.
    assert!((h.srow_x[3] as f64 + p[0]).abs() < 1e-3, "{:?} vs {p:?}", h.srow_x);
    assert!((h.srow_y[3] as f64 + p[1]).abs() < 1e-3, "{:?} vs {p:?}", h.srow_y);
    assert!((h.srow_z[3] as f64 - p[2]).abs() < 1e-3, "{:?} vs {p:?}", h.srow_z);
    assert!((h.srow_x[0] as f64 + o[0] * spacing[1]).abs() < 1e-4, "{:?}", h.srow_x);
    assert!((h.srow_y[1] as f64 + o[4] * spacing[0]).abs() < 1e-4, "{:?}", h.srow_y);
}

#[test]
fn eight_and_sixteen_bit_png_and_tiff_read_to_unit_range() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.png");
    let img = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(5, 3, |x, y| image::Luma([(x * 10000 + y) as u16]));
    img.save(&p).unwrap();
    let s = read_scan(&p).unwrap();
    assert_eq!((s.slices[0].height, s.slices[0].width), (3, 5));
    assert!((s.slices[0].values[4] - 40000.0 / 65535.0).abs() < 1e-6);
    assert_eq!(s.slices[0].units, scan::Units::Unit);
    let tif = dir.path().join("x.tif");
    img.save(&tif).unwrap();
    assert_eq!(read_scan(&tif).unwrap().slices[0].values, s.slices[0].values);
    let p8 = dir.path().join("x8.png");
    image::GrayImage::from_fn(2, 1, |x, _| image::Luma([(x * 255) as u8])).save(&p8).unwrap();
    assert_eq!(read_scan(&p8).unwrap().slices[0].values, vec![0.0, 1.0]);
    let bad = dir.path().join("x.jpg2");
    std::fs::write(&bad, b"x").unwrap();
    assert!(format!("{:#}", read_scan(&bad).unwrap_err()).contains("unsupported file type"));
    let broken = dir.path().join("broken.nii.gz");
    std::fs::write(&broken, b"not nifti").unwrap();
    assert!(format!("{:#}", read_scan(&broken).unwrap_err()).contains("broken.nii.gz"));
}

#[test]
fn predict_writes_png_and_nifti_for_any_size() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    generate(&SynthConfig { count: 8, size: 16, seed: 2, ..Default::default() }).unwrap().save(&data).unwrap();
    let run = dir.path().join("run");
    train::train(TrainRequest {
        data,
        out: run.clone(),
        config: RunConfig {
            model: common::tiny_config(),
            train: TrainConfig { epochs: 1, batch_size: 4, val_fraction: 0.0, figure_images: 2, figure_samples: 1, ..Default::default() },
            ..Default::default()
        },
        device: Device::flex(),
        resume: false,
        quiet: true,
    })
    .unwrap();
    let cfg = RunConfig::load(&run.join("config.toml")).unwrap();
    assert_eq!((cfg.data.height, cfg.data.width), (16, 16));
    // synth writes no preprocessing record: the run says unknown, never "lung".
    assert_eq!(cfg.data.preprocess, None::<Preprocess>);

    let png = dir.path().join("scan.png");
    image::GrayImage::from_fn(52, 40, |x, y| image::Luma([((x * 3 + y) % 256) as u8])).save(&png).unwrap();
    let out = dir.path().join("pred");
    let sampling = SamplingArgs { n: 3, checkpoint: train::Which::Last, batch_size: 4, ..SamplingArgs::for_run(&run) };
    predict_files(&PredictRequest::new(sampling.clone(), png, out.clone()), |_| {}).unwrap();
    let d = out.join("scan");
    for f in ["sample_00.png", "sample_02.png", "mean.png", "entropy.png", "overlay.png", "samples.nii.gz", "mean.nii.gz", "entropy.nii.gz"]
    {
        assert!(d.join(f).exists(), "missing {f}");
    }
    let mean = image::open(d.join("mean.png")).unwrap();
    assert_eq!((mean.width(), mean.height()), (52, 40));
    let nii = ReaderOptions::new().read_file(d.join("samples.nii.gz")).unwrap();
    assert_eq!(&nii.header().dim[..5], &[4, 52, 40, 1, 3]);
    let v = nii.into_volume().into_ndarray::<f32>().unwrap();
    assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
    // The review page's arrays are the NIfTI's samples, and `review` rebuilds the page.
    for f in ["review.html", "review.json", "inputs.npz", "samples.npz"] {
        assert!(d.join(f).exists(), "missing {f}");
    }
    let npz = apunet::data::npz::read_npz(&d.join("samples.npz")).unwrap();
    let Some(apunet::data::npz::NpyArray::U8(s)) = npz.get("samples") else { panic!("no samples") };
    assert_eq!(s.shape(), &[1, 3, 40, 52]);
    for ((_, k, y, x), &m) in s.view().into_dimensionality::<ndarray::Ix4>().unwrap().indexed_iter() {
        assert_eq!(m as f32, v[[x, y, 0, k]], "sample {k} at ({y}, {x})");
    }
    let page = std::fs::read_to_string(d.join("review.html")).unwrap();
    std::fs::remove_file(d.join("review.html")).unwrap();
    apunet::eval::publish::rebuild(&d, None).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("review.html")).unwrap(), page);

    let missing = predict_files(&PredictRequest::new(sampling, dir.path().join("nope.dcm"), out), |_| {}).unwrap_err();
    assert!(format!("{missing:#}").contains("does not exist"));
}

/// An untrained model without a transformer, so 128 px patches stay cheap.
fn plain_model(d: &Device) -> (ProbUNet, usize) {
    let cfg = apunet::model::ModelConfig { transformer_levels: apunet::model::TransformerLevels::None, ..common::tiny_config() };
    d.seed(21);
    (ProbUNet::new(&cfg, d), cfg.latent_dim)
}

#[test]
fn one_crop_predicts_exactly_what_sample_gives() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    let (model, latent) = plain_model(&d);
    let ds = Dataset::load(&common::shared_data().join("lidc/lidc-small-train.npz")).unwrap();
    let img = ds.subset(&[7]).images;
    let (n, seed) = (4, 3);
    let _ = latent;
    let model = Segmenter::PUNet(model);
    let s = sample_images(&model, &img, &Sampling { n, seed, batch: 8, mean_scales: vec![] }, &d, |_| {}).unwrap();
    let flat: Vec<f32> = img.iter().copied().collect();
    let p =
        predict_image(&model, &flat, 128, 128, (128, 128), &Sampling { n, seed, batch: 4, mean_scales: vec![] }, 0.5, &d, |_| {}).unwrap();
    let err = p.mean.iter().zip(s.mean.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "one patch: predict and sample differ by {err}");
}

#[test]
fn a_large_image_is_sampled_with_one_prior_and_one_latent_per_sample() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    let (model, latent) = plain_model(&d);
    // 256x256 stitched from four real LIDC crops: four different priors if asked per patch.
    let ds = Dataset::load(&common::shared_data().join("lidc/lidc-small-train.npz")).unwrap();
    let (h, w, p, n, seed) = (256, 256, 128, 3, 5);
    let tiles = [0, 12, 25, 40];
    let img: Vec<f32> = (0..h * w)
        .map(|q| {
            let (y, x) = (q / w, q % w);
            ds.images[[tiles[(y / p) * 2 + x / p], 0, y % p, x % p]]
        })
        .collect();
    let win = Windows::new(&img, h, w, p, p, 0.5).unwrap();
    assert_eq!(win.positions.len(), 9);

    // The image's prior is the mean of the patches' priors.
    let (mu, log_sigma) = image_prior(&model, &win, 4, &d).unwrap();
    let mut per_patch_mu = Vec::new();
    for &corner in &win.positions {
        let x = Tensor::<4>::from_data(TensorData::new(win.patches(&[corner]), [1, 1, p, p]), &d);
        per_patch_mu.push(to_host(model.prior.forward(x).mu).unwrap());
    }
    for k in 0..latent {
        let mean = per_patch_mu.iter().map(|m| m[k]).sum::<f32>() / 9.0;
        assert!((mu[k] - mean).abs() < 1e-5, "latent {k}: {} vs {mean}", mu[k]);
    }
    let spread = per_patch_mu.iter().map(|m| (m[0] - mu[0]).abs()).fold(0f32, f32::max);
    assert!(spread > 1e-4, "the tiles must give different patch priors for this test to mean anything");

    // A plain reference: every patch decoded with the same n latents, blended with the weights.
    let z = image_latents(&mu, &log_sigma, &image_eps(seed, 0, n, latent));
    let g = gaussian_weights(p, p);
    let (mut acc, mut wsum) = (vec![vec![0f32; h * w]; n], vec![0f32; h * w]);
    for &(y0, x0) in &win.positions {
        let x = Tensor::<4>::from_data(TensorData::new(win.patches(&[(y0, x0)]), [1, 1, p, p]), &d);
        let zt = Tensor::<2>::from_data(TensorData::new(z.clone(), [n, latent]), &d);
        let probs = to_host(burn::tensor::activation::sigmoid(model.decode_latents(model.unet.forward(x), zt))).unwrap();
        for q in 0..p * p {
            let at = (y0 + q / p) * w + x0 + q % p;
            wsum[at] += g[q];
            for s in 0..n {
                acc[s][at] += g[q] * probs[s * p * p + q];
            }
        }
    }
    let sampling = Sampling { n, seed, batch: 4, mean_scales: vec![] };
    let pred = predict_image(&Segmenter::PUNet(model), &img, h, w, (p, p), &sampling, 0.5, &d, |_| {}).unwrap();
    for s in 0..n {
        let err = (0..h * w).map(|q| (pred.probs[s][q] - acc[s][q] / wsum[q]).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "sample {s}: {err} from the one-latent reference");
    }
}
