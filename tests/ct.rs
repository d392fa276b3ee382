mod common;

use apunet::data::dicom::{read_dicom, read_series};
use apunet::data::intensity::Window;

fn ct(name: &str) -> std::path::PathBuf {
    common::shared_data().join("ct").join(name)
}

#[test]
fn real_dicom_slices_decode_to_hounsfield_units() {
    let small = read_dicom(&ct("CT_small.dcm")).unwrap();
    assert_eq!((small.rows, small.columns), (128, 128));
    let (lo, hi) = small.hu_range();
    assert!((lo - -896.0).abs() < 30.0 && (hi - 1167.0).abs() < 30.0, "CT_small HU [{lo}, {hi}]");
    assert_eq!(small.modality.as_deref(), Some("CT"));

    let uncr = read_dicom(&ct("693_UNCR.dcm")).unwrap();
    assert_eq!((uncr.rows, uncr.columns), (512, 512));
    let (lo, hi) = uncr.hu_range();
    assert!((lo - -3024.0).abs() < 30.0 && (hi - 1468.0).abs() < 30.0, "693_UNCR HU [{lo}, {hi}]");
    assert_eq!(uncr.window, Some((40.0, 100.0)));
    assert!(uncr.slope != 0.0);
}

#[test]
fn jpeg2000_lossless_equals_uncompressed() {
    let uncr = read_dicom(&ct("693_UNCR.dcm")).unwrap();
    let j2k = read_dicom(&ct("693_J2KR.dcm")).unwrap();
    assert_ne!(uncr.transfer_syntax, j2k.transfer_syntax);
    assert_eq!((j2k.rows, j2k.columns), (512, 512));
    assert_eq!(uncr.hu, j2k.hu, "J2K lossless must decode to exactly the same HU");
}

#[test]
fn windowing_the_file_window_and_presets() {
    let uncr = read_dicom(&ct("693_UNCR.dcm")).unwrap();
    let x = Window::File.apply(&uncr.hu, uncr.window);
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
    // Width 100 around 40: soft tissue spans the range, air is black.
    let lung = Window::Lung.apply(&uncr.hu, uncr.window);
    let mean_file = x.iter().sum::<f32>() / x.len() as f32;
    let mean_lung = lung.iter().sum::<f32>() / lung.len() as f32;
    assert!(mean_file != mean_lung);
}

#[test]
fn broken_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.dcm");
    std::fs::write(&text, b"this is not dicom").unwrap();
    let e = format!("{:#}", read_dicom(&text).unwrap_err());
    assert!(e.contains("notes.dcm") && e.contains("not a readable DICOM"), "{e}");

    let bytes = std::fs::read(ct("693_UNCR.dcm")).unwrap();
    let cut = dir.path().join("truncated.dcm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", read_dicom(&cut).unwrap_err());
    assert!(e.contains("truncated.dcm"), "{e}");

    let missing = dir.path().join("missing.dcm");
    assert!(format!("{:#}", read_dicom(&missing).unwrap_err()).contains("missing.dcm"));

    let empty = tempfile::tempdir().unwrap();
    assert!(format!("{:#}", read_series(empty.path()).unwrap_err()).contains("no readable DICOM"));
}

#[test]
fn a_series_folder_reads_every_slice() {
    let dir = tempfile::tempdir().unwrap();
    for (i, f) in ["CT_small.dcm", "693_UNCR.dcm"].iter().enumerate() {
        std::fs::copy(ct(f), dir.path().join(format!("z{i}.dcm"))).unwrap();
    }
    std::fs::write(dir.path().join("README.txt"), b"not a slice").unwrap();
    let s = read_series(dir.path()).unwrap();
    assert_eq!(s.len(), 2);
}
