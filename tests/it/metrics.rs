use apunet::data::npz::{self, NpzEntry};
use apunet::eval::metrics::{BitMask, dice, ged, ged_squared, hungarian_iou, iou, majority};
use apunet::eval::report::{check_inputs, evaluate};
use apunet::jobs::evaluate::score_files;
use ndarray::Array4;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn bm(v: &[u8]) -> BitMask {
    BitMask::new(v)
}

/// A straightforward, unpacked implementation to check the packed one against.
fn naive_ged(s: &[Vec<u8>], y: &[Vec<u8>]) -> f64 {
    let d = |a: &[u8], b: &[u8]| {
        let inter = a.iter().zip(b).filter(|(x, y)| **x == 1 && **y == 1).count() as f64;
        let union = a.iter().zip(b).filter(|(x, y)| **x == 1 || **y == 1).count() as f64;
        if union == 0.0 { 0.0 } else { 1.0 - inter / union }
    };
    let avg = |a: &[Vec<u8>], b: &[Vec<u8>]| {
        let mut t = 0.0;
        for x in a {
            for z in b {
                t += d(x, z);
            }
        }
        t / (a.len() * b.len()) as f64
    };
    2.0 * avg(s, y) - avg(s, s) - avg(y, y)
}

#[test]
fn ged_hand_computed_cases() {
    let e = vec![0u8; 4];
    let a = vec![1u8, 1, 0, 0];
    let b = vec![0u8, 1, 1, 0];
    // All empty: every distance is 0.
    assert_eq!(ged_squared(&[&e, &e], &[&e, &e]), 0.0);
    // Samples empty, labels one lesion: 2*1 - 0 - 0.
    assert_eq!(ged_squared(&[&e], &[&a]), 2.0);
    // Identical single masks: 0.
    assert_eq!(ged_squared(&[&a], &[&a]), 0.0);
    // N = M = 2, samples {a, b}, labels {a, e}:
    // cross d: (a,a)=0 (a,e)=1 (b,a)=2/3 (b,e)=1 -> mean 2.6667/4 = 0.6667
    // ss: (a,b)=(b,a)=2/3, self 0 -> 4/3 / 4 = 1/3; yy: (a,e)=(e,a)=1 -> 2/4 = 1/2
    let g = ged_squared(&[&a, &b], &[&a, &e]);
    assert!((g - (2.0 * (2.0 + 2.0 / 3.0) / 4.0 - 1.0 / 3.0 - 0.5)).abs() < 1e-12, "{g}");
}

#[test]
fn ged_matches_an_independent_implementation_and_ignores_order() {
    let mut rng = StdRng::seed_from_u64(5);
    for trial in 0..20 {
        let len = 64 * 3 + trial;
        let mk = |rng: &mut StdRng, p: f64| -> Vec<u8> { (0..len).map(|_| rng.gen_bool(p) as u8).collect() };
        let s: Vec<Vec<u8>> = (0..8).map(|k| if k == 3 { vec![0; len] } else { mk(&mut rng, 0.2) }).collect();
        let y: Vec<Vec<u8>> = (0..4).map(|_| mk(&mut rng, 0.25)).collect();
        let packed = ged(&s.iter().map(|m| bm(m)).collect::<Vec<_>>(), &y.iter().map(|m| bm(m)).collect::<Vec<_>>());
        assert!((packed - naive_ged(&s, &y)).abs() < 1e-12);
        let mut shuffled: Vec<BitMask> = s.iter().map(|m| bm(m)).collect();
        shuffled.reverse();
        shuffled.swap(0, 5);
        let again = ged(&shuffled, &y.iter().map(|m| bm(m)).collect::<Vec<_>>());
        assert!((packed - again).abs() < 1e-12, "GED must not depend on sample order");
    }
}

#[test]
fn hungarian_iou_hand_computed_cases() {
    let e = bm(&[0, 0, 0, 0]);
    let a = bm(&[1, 1, 0, 0]);
    let b = bm(&[0, 0, 1, 1]);
    // N = M: the best matching pairs a-a and b-b.
    assert_eq!(hungarian_iou(&[b.clone(), a.clone()], &[a.clone(), b.clone()]).unwrap(), 1.0);
    // Empty sample with empty label counts as a perfect match; with a lesion as 0.
    assert_eq!(hungarian_iou(&[e.clone(), e.clone()], &[e.clone(), a.clone()]).unwrap(), 0.5);
    // N = 4M with M = 1: four samples all matched to the one label.
    let half = bm(&[1, 0, 0, 0]);
    let v = hungarian_iou(&[a.clone(), half.clone(), a.clone(), e.clone()], std::slice::from_ref(&a)).unwrap();
    assert!((v - (1.0 + 0.5 + 1.0 + 0.0) / 4.0).abs() < 1e-12);
    // N = 4M with M = 2: each label is used exactly twice, so one a-sample must take label b.
    let v = hungarian_iou(&[a.clone(), a.clone(), a.clone(), b.clone()], &[a.clone(), b.clone()]).unwrap();
    assert!((v - 0.75).abs() < 1e-12, "{v}");
    let err = hungarian_iou(&[a.clone(), a.clone(), a.clone()], &[a.clone(), b.clone()]).unwrap_err();
    assert!(format!("{err}").contains("multiple of the annotator count"));
}

#[test]
fn dice_iou_and_majority_edge_cases() {
    let e = bm(&[0, 0, 0]);
    let a = bm(&[1, 1, 0]);
    assert_eq!((dice(&e, &e), iou(&e, &e)), (1.0, 1.0));
    assert_eq!((dice(&a, &e), iou(&a, &e)), (0.0, 0.0));
    assert_eq!(majority(&[&[1, 0, 1], &[1, 0, 0]]), vec![1, 0, 1], "ties count as lesion");
    assert_eq!(majority(&[&[1, 0, 0], &[1, 0, 0], &[0, 1, 0]]), vec![1, 0, 0]);
}

#[test]
fn evaluate_summarises_with_intervals() {
    let mut rng = StdRng::seed_from_u64(1);
    let labels = Array4::from_shape_fn((12, 4, 8, 8), |(i, _, y, x)| ((x + y + i) % 5 == 0 && rng.gen_bool(0.8)) as u8);
    let samples = Array4::from_shape_fn((12, 8, 8, 8), |(i, k, y, x)| labels[[i, k % 4, y, x]]);
    check_inputs(&samples.view(), &labels.view(), "s", "l").unwrap();
    let r = evaluate(samples.view(), labels.view(), 0).unwrap();
    let ged = r.stat("ged").unwrap();
    assert!(ged.ci95[0] <= ged.mean && ged.mean <= ged.ci95[1]);
    // Samples that copy the annotators twice over reproduce their distribution: GED 0, HM-IoU 1.
    assert!(ged.mean.abs() < 1e-12, "{ged:?}");
    assert!((r.stat("hm_iou").unwrap().mean - 1.0).abs() < 1e-12);
    assert_eq!(r.per_image.len(), 12);
    assert!(r.stat("dice_annotator_4").is_some());
    let dir = tempfile::tempdir().unwrap();
    r.write(dir.path(), "t").unwrap();
    for f in ["metrics.json", "per_image.csv", "report.md"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("metrics.json")).unwrap()).unwrap();
    assert!(json["metrics"]["ged"]["mean"].as_f64().unwrap().abs() < 1e-12);
}

#[test]
fn metrics_command_errors_name_the_file_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, key: &str, a: &Array4<u8>| {
        let p = d.join(name);
        let a = a.clone().into_dyn();
        npz::write_npz(&p, &[(key, NpzEntry::U8(&a))]).unwrap();
        p
    };
    let labels = write("l.npz", "masks", &Array4::zeros((3, 4, 8, 8)));
    let run = |s: std::path::PathBuf, l: std::path::PathBuf| score_files(&s, &l, None).err().map(|e| format!("{e:#}"));
    let good = write("s.npz", "samples", &Array4::zeros((3, 8, 8, 8)));
    assert_eq!(run(good.clone(), labels.clone()), None);

    let wrong = write("wrong.npz", "samples", &Array4::zeros((3, 8, 8, 9)));
    let e = run(wrong, labels.clone()).unwrap();
    assert!(e.contains("wrong.npz") && e.contains("[3, 8, 8, 9]") && e.contains("expected samples [3, n, 8, 8]"), "{e}");

    let six = write("six.npz", "samples", &Array4::zeros((3, 6, 8, 8)));
    let e = run(six, labels.clone()).unwrap();
    assert!(e.contains("six.npz") && e.contains("multiple of the annotators"), "{e}");

    let mut nb = Array4::<u8>::zeros((3, 8, 8, 8));
    nb[[0, 0, 0, 0]] = 2;
    let e = run(write("nb.npz", "samples", &nb), labels.clone()).unwrap();
    assert!(e.contains("nb.npz") && e.contains("binary"), "{e}");

    let empty = d.join("empty.npz");
    std::fs::write(&empty, b"").unwrap();
    let e = run(empty, labels.clone()).unwrap();
    assert!(e.contains("empty.npz"), "{e}");

    let e = run(write("key.npz", "other", &Array4::zeros((3, 8, 8, 8))), labels.clone()).unwrap();
    assert!(e.contains("key.npz") && e.contains("no 'samples'") && e.contains("[N, n, H, W]"), "{e}");

    let zero = write("zero.npz", "samples", &Array4::zeros((0, 8, 8, 8)));
    let e = run(zero, labels).unwrap();
    assert!(e.contains("zero.npz") && e.contains("N, n >= 1"), "{e}");
}
