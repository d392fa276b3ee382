//! LIDC crops as people hold them (issue 32): the PyTorch port's pickle (one file, or a folder
//! merged as its loader merges), DeepMind's PNG folders, and a pickle that would run code.
//! Fixtures are written from the real crops by Python and numpy (tests/fixtures/lidc_layouts.py)
//! and must load to the npz's arrays.

use std::path::{Path, PathBuf};
use std::process::Command;

use apunet::data::Dataset;

use crate::common;

const N: usize = 8;

/// A Python that imports numpy: $APUNET_PYTHON, python3, or Debian's /usr/bin/python3 (which
/// .ci/run provides).
fn python() -> PathBuf {
    let candidates = [std::env::var("APUNET_PYTHON").unwrap_or_default(), "python3".into(), "/usr/bin/python3".into()];
    candidates
        .iter()
        .filter(|p| !p.is_empty())
        .find(|p| Command::new(p).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success()))
        .map(PathBuf::from)
        .expect("no Python with numpy for the LIDC fixtures: run .ci/run, which installs python3-numpy, or set APUNET_PYTHON")
}

fn fixtures(dir: &Path) -> Dataset {
    let data = common::shared_data().join("lidc/lidc-small-train.npz");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lidc_layouts.py");
    let out = Command::new(python()).arg(&script).arg(&data).arg(dir).arg(N.to_string()).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Dataset::load(&data).unwrap().subset(&(0..N).collect::<Vec<_>>())
}

#[test]
fn the_ports_pickle_loads_to_the_npz_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let reference = fixtures(dir.path());
    for input in [dir.path().join("port.pickle"), dir.path().join("split")] {
        let ds = Dataset::load(&input).unwrap();
        assert_eq!(ds.images, reference.images, "{}: images differ", input.display());
        assert_eq!(ds.masks, reference.masks, "{}: masks differ", input.display());
        assert_eq!(ds.series, reference.series, "{}: series differ", input.display());
    }
    // import writes the same as an npz.
    let out = dir.path().join("lidc.npz");
    let run = Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args(["import", "--input", dir.path().join("split").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(Dataset::load(&out).unwrap().images, reference.images);
}

#[test]
fn deepminds_png_folders_load_and_import_cuts_their_centre() {
    let dir = tempfile::tempdir().unwrap();
    let reference = fixtures(dir.path());
    let root = dir.path().join("deepmind");
    let full = Dataset::load(&root).unwrap();
    assert_eq!((full.len(), full.height(), full.annotators()), (N, 180, 4));
    let out = dir.path().join("dm.npz");
    let run = Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args(["import", "--input", root.to_str().unwrap(), "--out", out.to_str().unwrap(), "--crop", "128"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let ds = Dataset::load(&out).unwrap();
    assert_eq!(ds.masks, reference.masks);
    // 8-bit PNGs: within half a grey level.
    let worst = ds.images.iter().zip(reference.images.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 0.5 / 255.0 + 1e-6, "images differ by {worst}");
    // One series per patient folder: crops of one patient stay together in splits.
    let patients: std::collections::BTreeSet<&String> = ds.series.iter().collect();
    let distinct: std::collections::BTreeSet<&String> = reference.series.iter().collect();
    assert_eq!(patients.len(), distinct.len());
}

#[test]
fn a_pickle_that_would_run_code_is_refused_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let err = format!("{:#}", Dataset::load(&dir.path().join("evil.pickle")).expect_err("must refuse"));
    assert!(err.contains("system") && err.contains("does not run"), "{err}");
    assert!(!dir.path().join("pwned.txt").exists());
    // Not a pickle at all.
    let junk = dir.path().join("junk.pickle");
    std::fs::write(&junk, b"\x80\x04\x95garbage").unwrap();
    assert!(Dataset::load(&junk).is_err());
}
