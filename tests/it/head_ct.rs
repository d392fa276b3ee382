//! The synthetic head CT (issue 30): HU values where a head has them, lesions that a lung
//! window hides and a brain window shows, experts who disagree on the faint ones, and a folder
//! that `import` reads at one spacing through the brain window.

use std::process::Command;

use apunet::data::Dataset;
use apunet::data::intensity::Window;
use apunet::data::preprocess::Units;
use apunet::data::scan::read_scan;

#[test]
fn a_synthetic_head_ct_hides_its_lesions_from_the_lung_window_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("head");
    let out = Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args(["synth", "--kind", "head-ct", "--out", root.to_str().unwrap(), "--count", "10", "--size", "96", "--seed", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (mut lesions, mut disagree) = (0, 0);
    for i in 0..10 {
        let scan = read_scan(&root.join(format!("images/head{i:03}.nii.gz"))).unwrap();
        let sl = &scan.slices[0];
        assert_eq!(sl.units, Units::Hu, "the header says HU");
        let spacing = scan.spacing().expect("a pixel spacing");
        assert!((0.42..0.6).contains(&(spacing.0 as f32)), "{spacing:?}");
        let hu = &sl.values;
        assert!(hu.iter().any(|&v| v <= -990.0) && hu.iter().any(|&v| v >= 800.0), "air and skull");
        let experts: Vec<Vec<u8>> = (1..=4)
            .map(|k| {
                read_scan(&root.join(format!("labels/head{i:03}_A{k}.nii.gz"))).unwrap().slices[0]
                    .values
                    .iter()
                    .map(|&v| u8::from(v > 0.0))
                    .collect()
            })
            .collect();
        // Brain: values between 0 and 100 HU; its median is the parenchyma's.
        let mut brain: Vec<f32> = hu.iter().copied().filter(|v| (0.0..100.0).contains(v)).collect();
        brain.sort_by(f32::total_cmp);
        let median = brain[brain.len() / 2];
        assert!((25.0..42.0).contains(&median), "case {i}: parenchyma at {median} HU");
        let marked: Vec<usize> = (0..hu.len()).filter(|&j| experts.iter().any(|m| m[j] == 1)).collect();
        if marked.is_empty() {
            continue;
        }
        lesions += 1;
        disagree += usize::from(experts.iter().any(|m| m != &experts[0]));
        let mean = |w: Option<&Window>, idx: &[usize]| {
            let v: Vec<f32> = idx.iter().map(|&j| hu[j]).collect();
            let v = match w {
                Some(w) => w.apply(&v, None),
                None => v,
            };
            v.iter().sum::<f32>() / v.len() as f32
        };
        // The core every marking expert agrees on: 50-75 HU and noise.
        let core: Vec<usize> = marked.iter().copied().filter(|&j| experts.iter().filter(|m| m.contains(&1)).all(|m| m[j] == 1)).collect();
        let lesion_hu = mean(None, &core);
        assert!((45.0..80.0).contains(&lesion_hu), "case {i}: lesion core at {lesion_hu} HU");
        // In the lung window a lesion is within a few grey levels of the brain; in the brain
        // window it stands out.
        let all: Vec<usize> = (0..hu.len()).filter(|&j| (0.0..100.0).contains(&hu[j]) && experts.iter().all(|m| m[j] == 0)).collect();
        let lung = mean(Some(&Window::Lung), &marked) - mean(Some(&Window::Lung), &all);
        let brain_w = mean(Some(&Window::Brain), &marked) - mean(Some(&Window::Brain), &all);
        assert!(lung.abs() < 0.04 && brain_w > 0.15, "case {i}: lung-window contrast {lung}, brain-window {brain_w}");
    }
    assert!(lesions >= 5 && disagree >= 3, "{lesions} cases with lesions, {disagree} with disagreeing experts");
    // import reads the folder through the brain window at one spacing.
    let npz = dir.path().join("head.npz");
    let out = Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args([
            "import",
            "--input",
            root.to_str().unwrap(),
            "--out",
            npz.to_str().unwrap(),
            "--window",
            "brain",
            "--spacing",
            "0.5",
            "--crop",
            "64",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ds = Dataset::load(&npz).unwrap();
    assert_eq!(ds.annotators(), 4);
    let p = ds.preprocess.unwrap();
    assert_eq!((p.window, p.spacing), (Some(Window::Brain), Some(0.5)));
}

#[test]
fn the_demo_runs_on_the_head_ct_as_a_second_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args(["demo", "--data", "head-ct", "--out", dir.path().to_str().unwrap(), "--epochs", "1", "--count", "16"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ds = Dataset::load(&dir.path().join("synthetic.npz")).unwrap();
    let p = ds.preprocess.clone().expect("imported with a record");
    assert_eq!((p.window, p.spacing, ds.height()), (Some(Window::Brain), Some(0.5), 64));
    assert!(dir.path().join("eval/metrics.json").exists() && dir.path().join("eval/review.html").exists());
}
