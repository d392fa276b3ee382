//! The lesion painter (`gan train --mode painter`, issue 27): a resumed run continues bit for
//! bit, and its examples keep the target crop outside the painted place, where their copy-paste
//! twins hold the donor's pixels instead.

use crate::common;
use std::path::Path;

use apunet::data::Dataset;
use apunet::data::synth::{SynthConfig, generate as synth};
use apunet::gan::networks::GanConfig;
use apunet::gan::painter;
use apunet::gan::train::{Domain, GanMode, GanRequest, GanTrainConfig, generate, train_gan};
use burn::prelude::*;

fn request(ds: &Dataset, out: &Path, epochs: usize, resume: bool) -> GanRequest {
    GanRequest {
        a: Domain::from_mean_masks(ds),
        b: Domain::from_images(ds, Path::new("synth")).unwrap(),
        out: out.to_path_buf(),
        config: GanTrainConfig {
            mode: GanMode::Painter,
            epochs,
            // A constant rate: the schedule's decay depends on the total, which a resume changes.
            decay_epochs: 0,
            net: GanConfig { base: 4, residual_blocks: 1, ..Default::default() },
            ..Default::default()
        },
        device: Device::flex(),
        resume,
        quiet: true,
        sources: Vec::new(),
    }
}

#[test]
fn painter_resumes_bit_for_bit_and_paints_only_the_pasted_place() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(&SynthConfig { count: 6, size: 32, empty_fraction: 0.0, seed: 4, per_series: 1, ..Default::default() }).unwrap();
    let (split, whole) = (dir.path().join("split"), dir.path().join("whole"));
    train_gan(request(&ds, &split, 1, false)).unwrap();
    let resumed = train_gan(request(&ds, &split, 2, true)).unwrap().state;
    let straight = train_gan(request(&ds, &whole, 2, false)).unwrap().state;
    assert_eq!((resumed.cycle.clone(), resumed.generator.clone()), (straight.cycle.clone(), straight.generator.clone()));
    assert_eq!(resumed.discriminator, straight.discriminator);
    assert!(split.join("figures/epoch_002.png").exists());

    let (painted, copied) = generate(&whole, (Path::new("ds.npz"), &ds), 5, 1, false, &Device::flex()).unwrap();
    // The same weights paint the same pixels.
    let (again, _) = generate(&split, (Path::new("ds.npz"), &ds), 5, 1, false, &Device::flex()).unwrap();
    assert!(again.images == painted.images, "the resumed painter paints otherwise than the uninterrupted one");
    let copied = copied.expect("a painter makes copy-paste twins");
    assert_eq!((painted.len(), copied.len(), painted.annotators()), (5, 5, 4));
    assert_eq!(painted.masks, copied.masks);
    assert!(painted.synthetic.iter().all(|&s| s) && painted.images.iter().all(|v| (0.0..=1.0).contains(v)));
    let hw = 32 * 32;
    let (pi, ci) = (painted.images.as_slice().unwrap(), copied.images.as_slice().unwrap());
    let real = ds.images.as_slice().unwrap();
    let mut differs = 0;
    for k in 0..5 {
        // "paint.SEED.K.TARGET.from.DONOR": every synthetic crop here is its own series.
        let named = painted.series[k].strip_prefix(&format!("paint.1.{k}.")).unwrap();
        let target_series = named.split(".from.").next().unwrap().to_string();
        let target = ds.series.iter().position(|s| *s == target_series).expect("the target's series");
        let m = painted.masks.index_axis(ndarray::Axis(0), k);
        let soft: Vec<f32> = (0..hw).map(|j| if m.iter().skip(j).step_by(hw).any(|&v| v > 0) { 1.0 } else { 0.0 }).collect();
        let hole = painter::hole(&soft, 32, 32);
        for j in 0..hw {
            let (p, c) = (pi[k * hw + j], ci[k * hw + j]);
            if hole[j] == 0.0 {
                assert_eq!(
                    p,
                    real[target * hw + j],
                    "example {k}, pixel {j}: outside every lesion's place the painted crop is the target's own"
                );
            } else if (p - c).abs() > 1e-3 {
                differs += 1;
            }
        }
    }
    assert!(differs > 0, "the painted places equal the pasted ones");
    // Series names say which crop received which crop's lesion.
    assert!(painted.series[0].starts_with("paint.1.0.") && copied.series[0].starts_with("paste.1.0."), "{:?}", painted.series);

    // Refusals: crops without a lesion, a twin path that is the output, twins from a CycleGAN.
    let clean = synth(&SynthConfig { count: 3, size: 32, empty_fraction: 1.0, seed: 2, ..Default::default() }).unwrap();
    let e = format!("{:#}", train_gan(request(&clean, &dir.path().join("clean"), 1, false)).unwrap_err());
    assert!(e.contains("no expert marked anything"), "{e}");
    let data = dir.path().join("ds.npz");
    ds.save(&data).unwrap();
    let out = dir.path().join("p.npz");
    let e = apunet::gan::generate::generate_to_file(&whole, &data, (&out, Some(&out)), (2, 0), false, &Device::flex()).unwrap_err();
    assert!(format!("{e:#}").contains("are the same file"), "{e:#}");
    assert!(apunet::gan::paint::save_twin(None, Some(&out)).is_err());
}
