use crate::common;

use apunet::data::dicom::{read_dicom, read_series};
use apunet::data::intensity::Window;
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// Writes a 16-bit signed CT slice with the given rescale, modality and geometry.
#[allow(clippy::too_many_arguments)]
fn write_ct(path: &std::path::Path, rows: u16, cols: u16, raw: &[i16], slope: &str, intercept: &str, modality: &str, z: f64) {
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, v));
    };
    put(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::CT_IMAGE_STORAGE));
    put(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(format!("2.25.{}", (z.abs() * 1000.0) as u64 + 7)));
    put(tags::MODALITY, VR::CS, PrimitiveValue::from(modality));
    put(tags::ROWS, VR::US, PrimitiveValue::from(rows));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(cols));
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("MONOCHROME2"));
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
    put(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16));
    put(tags::RESCALE_SLOPE, VR::DS, PrimitiveValue::from(slope));
    put(tags::RESCALE_INTERCEPT, VR::DS, PrimitiveValue::from(intercept));
    put(tags::PIXEL_SPACING, VR::DS, dicom_value!(Strs, ["0.7", "0.6"]));
    put(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, dicom_value!(Strs, ["1", "0", "0", "0", "1", "0"]));
    put(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(["-100".to_string(), "-90".to_string(), format!("{z}")].into_iter().collect()),
    );
    put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(raw.iter().map(|&v| v as u16).collect()));
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap().write_to_file(path).unwrap();
}

#[test]
fn written_dicom_round_trips_hu_and_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.dcm");
    let raw: Vec<i16> = (0..6 * 4).map(|i| (i * 50) as i16).collect();
    write_ct(&p, 4, 6, &raw, "1", "-1024", "CT", 12.5);
    let s = read_dicom(&p).unwrap();
    assert_eq!((s.rows, s.columns, s.frames), (4, 6, 1));
    let want: Vec<f32> = raw.iter().map(|&v| v as f32 - 1024.0).collect();
    assert_eq!(s.hu, want);
    assert_eq!(s.pixel_spacing, Some([0.7, 0.6]));
    assert_eq!(s.position, Some([-100.0, -90.0, 12.5]));
    assert_eq!(s.normal_position(), Some(12.5));
}

#[test]
fn series_are_ordered_along_the_normal_not_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (name, z, v) in [("a.dcm", 30.0, 3i16), ("b.dcm", 10.0, 1), ("c.dcm", 20.0, 2)] {
        write_ct(&dir.path().join(name), 2, 2, &[v; 4], "1", "0", "CT", z);
    }
    let s = read_series(dir.path()).unwrap();
    let first: Vec<f32> = s.iter().map(|x| x.hu[0]).collect();
    assert_eq!(first, vec![1.0, 2.0, 3.0]);
}

#[test]
fn absurd_rescale_non_ct_and_unknown_transfer_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("absurd.dcm");
    write_ct(&p, 2, 2, &[100, 200, 300, 400], "1000", "0", "CT", 0.0);
    let e = format!("{:#}", read_dicom(&p).unwrap_err());
    assert!(e.contains("absurd.dcm") && e.contains("RescaleSlope (0028,1053) = 1000"), "{e}");

    // Another modality still reads (with a warning in the log).
    let mr = dir.path().join("mr.dcm");
    write_ct(&mr, 2, 2, &[1, 2, 3, 4], "1", "0", "MR", 0.0);
    assert_eq!(read_dicom(&mr).unwrap().modality.as_deref(), Some("MR"));

    // Same file with its transfer syntax UID rewritten to one no decoder knows.
    let ok = dir.path().join("ok.dcm");
    write_ct(&ok, 2, 2, &[1, 2, 3, 4], "1", "0", "CT", 0.0);
    let mut bytes = std::fs::read(&ok).unwrap();
    let from = uids::EXPLICIT_VR_LITTLE_ENDIAN.as_bytes();
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    bytes[at + from.len() - 1] = b'9';
    let weird = dir.path().join("weird.dcm");
    std::fs::write(&weird, &bytes).unwrap();
    let e = format!("{:#}", read_dicom(&weird).unwrap_err());
    assert!(e.contains("weird.dcm"), "{e}");
}

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
    let (center, width) = uncr.window.expect("693_UNCR.dcm carries WindowCenter/WindowWidth");
    // A plain reference: level - width/2 maps to 0, level + width/2 to 1, clipped.
    let reference = |hu: f32, w: f64, l: f64| (((hu as f64 - (l - w / 2.0)) / w).clamp(0.0, 1.0)) as f32;
    for (window, (w, l)) in [(Window::File, (width, center)), (Window::Lung, (1500.0, -600.0)), (Window::Mediastinum, (350.0, 50.0))] {
        let x = window.apply(&uncr.hu, uncr.window);
        assert_eq!(x.len(), uncr.hu.len());
        for (k, (&v, &hu)) in x.iter().zip(&uncr.hu).enumerate() {
            assert!((v - reference(hu, w, l)).abs() < 1e-6, "{window}: pixel {k} HU {hu} gave {v}");
        }
    }
    // The slice holds air and soft tissue: the lung window shows air mid-grey, the mediastinum
    // window shows it black, and both use more than a sliver of the range.
    let air = (0..uncr.hu.len()).min_by(|&a, &b| uncr.hu[a].total_cmp(&uncr.hu[b])).unwrap();
    assert!(uncr.hu[air] < -950.0, "the slice holds air");
    assert!(Window::Lung.apply(&uncr.hu[air..air + 1], None)[0] < 0.25);
    assert_eq!(Window::Mediastinum.apply(&uncr.hu[air..air + 1], None)[0], 0.0);
    let lung = Window::Lung.apply(&uncr.hu, None);
    let distinct: std::collections::BTreeSet<u32> = lung.iter().map(|v| (v * 100.0) as u32).collect();
    assert!(distinct.len() > 20, "lung window uses only {} levels", distinct.len());
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
    for (i, f) in ["693_UNCR.dcm", "693_J2KR.dcm"].iter().enumerate() {
        std::fs::copy(ct(f), dir.path().join(format!("z{i}.dcm"))).unwrap();
    }
    std::fs::write(dir.path().join("README.txt"), b"not a slice").unwrap();
    let s = read_series(dir.path()).unwrap();
    assert_eq!(s.len(), 2);
    assert!(s.iter().all(|s| (s.rows, s.columns) == (512, 512)));
}

#[test]
fn a_series_folder_with_slices_of_another_size_is_an_error_naming_them() {
    // Both orders: the odd slice first and last (once a panic, once a mangled volume).
    for names in [["a.dcm", "b.dcm", "c.dcm"], ["c.dcm", "b.dcm", "a.dcm"]] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(ct("693_UNCR.dcm"), dir.path().join(names[0])).unwrap();
        std::fs::copy(ct("693_J2KR.dcm"), dir.path().join(names[1])).unwrap();
        std::fs::copy(ct("CT_small.dcm"), dir.path().join(names[2])).unwrap();
        let e = format!("{:#}", read_series(dir.path()).unwrap_err());
        assert!(e.contains("differ in size") && e.contains(names[2]) && e.contains("128x128"), "{e}");
        assert!(!e.contains(names[0]) && !e.contains(names[1]), "only the odd file is named: {e}");
        let scan = apunet::data::scan::read_scan(dir.path());
        assert!(scan.is_err(), "read_scan must refuse the folder too");
    }
    // One slice of each size: the count agrees with its verb.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(ct("693_UNCR.dcm"), dir.path().join("a.dcm")).unwrap();
    std::fs::copy(ct("CT_small.dcm"), dir.path().join("c.dcm")).unwrap();
    let e = format!("{:#}", read_series(dir.path()).unwrap_err());
    assert!(e.contains(": 1 is ") && e.contains("but 1 is not") && !e.contains("1 are"), "{e}");
}

#[test]
fn every_window_preset_maps_real_ct_as_a_plain_formula_does() {
    use apunet::data::intensity::{PRESETS, Window};
    let uncr = read_dicom(&ct("693_UNCR.dcm")).unwrap();
    for (w, name, width, level) in PRESETS {
        let got = w.apply(&uncr.hu, None);
        // The reference, written out: level - width/2 -> 0, level + width/2 -> 1, clipped.
        let low = level - width / 2.0;
        let mut inside = 0;
        for (i, (&hu, &v)) in uncr.hu.iter().zip(&got).enumerate() {
            let want = ((hu as f64 - low) / width).clamp(0.0, 1.0);
            assert!((v as f64 - want).abs() < 1e-6, "{name} at {i}: {v} against {want}");
            inside += usize::from(v > 0.0 && v < 1.0);
        }
        assert!(inside > 0, "{name} leaves no pixel of a real CT between black and white");
        assert_eq!(name.parse::<Window>().unwrap(), w, "the flag's word for {name}");
    }
    // The names the flags and the review page use are the table's.
    let mut cmd = apunet::cli::command();
    for sub in ["predict", "import"] {
        let help = cmd.find_subcommand_mut(sub).unwrap().render_long_help().to_string();
        for (_, name, _, _) in PRESETS {
            assert!(help.contains(name), "{sub} --help does not name the {name} window");
        }
    }
}
