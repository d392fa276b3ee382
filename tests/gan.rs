mod common;

use apunet::gan::networks::{Discriminator, Generator, l1, lsgan};
use apunet::model::to_host;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;

#[test]
fn generator_and_patchgan_shapes() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    let g = Generator::new(1, 2, 4, 2, &d);
    let disc = Discriminator::new(2, 4, &d);
    for (size, patches) in [(128, 14), (256, 30), (36, 2)] {
        Generator::check_size(size, size).unwrap();
        let x = Tensor::<4>::random([1, 1, size, size], Distribution::Uniform(-1.0, 1.0), &d);
        let y = g.forward(x);
        assert_eq!(y.dims(), [1, 2, size, size]);
        assert!(to_host(y.clone()).unwrap().iter().all(|v| (-1.0..=1.0).contains(v)));
        // 70x70 PatchGAN: 30x30 scores on a 256x256 image, as in the paper's code.
        assert_eq!(disc.forward(y).dims(), [1, 1, patches, patches]);
    }
    // A size the two stride-2 steps cannot round-trip is refused up front.
    let e = Generator::check_size(130, 128).unwrap_err();
    assert!(format!("{e}").contains("130x128"), "{e}");
}

#[test]
fn losses_of_identical_pairs_and_targets_are_zero() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    let x = Tensor::<4>::random([2, 1, 8, 8], Distribution::Uniform(-1.0, 1.0), &d);
    assert_eq!(to_host(l1(x.clone(), x.clone())).unwrap()[0], 0.0);
    assert!(to_host(l1(x.clone(), x.clone() + 0.5)).unwrap()[0] > 0.49);
    assert_eq!(to_host(lsgan(Tensor::ones([1, 1, 3, 3], &d), 1.0)).unwrap()[0], 0.0);
    assert_eq!(to_host(lsgan(Tensor::zeros([1, 1, 3, 3], &d), 1.0)).unwrap()[0], 1.0);
}

#[test]
fn tiny_cyclegan_lowers_its_cycle_loss() {
    let _guard = common::rng_lock();
    let d = Device::flex().autodiff();
    d.seed(3);
    let mut gab = Generator::new(1, 1, 4, 1, &d);
    let mut gba = Generator::new(1, 1, 4, 1, &d);
    let (mut oab, mut oba) = (AdamConfig::new().init(), AdamConfig::new().init());
    let a = Tensor::<4>::random([2, 1, 16, 16], Distribution::Uniform(-0.8, 0.8), &d);
    let mut losses = Vec::new();
    for _ in 0..40 {
        let loss = l1(gba.forward(gab.forward(a.clone())), a.clone());
        losses.push(to_host(loss.clone()).unwrap()[0]);
        let mut grads = loss.backward();
        let (ga, gb) = (GradientsParams::from_module(&mut grads, &gab), GradientsParams::from_module(&mut grads, &gba));
        gab = oab.step(2e-3, gab, ga);
        gba = oba.step(2e-3, gba, gb);
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.7 * first, "cycle loss {first} -> {last}");
}
