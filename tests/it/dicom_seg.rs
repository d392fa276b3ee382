//! DICOM SEG out (issue 30): `predict` on a DICOM series writes the samples (binary segments)
//! and the mean probability (fractional) as Segmentation objects referencing the source slices;
//! checked here by reading them back with dicom-object and with highdicom, an independent reader.

use std::path::{Path, PathBuf};
use std::process::Command;

use apunet::data::dicom_seg::new_uid;
use apunet::data::intensity::Window;
use apunet::data::npz::{NpyArray, read_npz};
use apunet::data::preprocess::Preprocess;
use apunet::data::synth::{SynthConfig, generate};
use apunet::jobs::predict::{PredictRequest, ScanReport, predict_files};
use apunet::jobs::sample::RunSampling;
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest};
use burn::prelude::Device;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject, open_file};

use crate::common;

/// `n` copies of CT_small.dcm as one series, 2.5 mm apart, each with its own SOP Instance UID;
/// returns those UIDs in slice order.
fn series(dir: &Path, n: usize) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let src = open_file(common::shared_data().join("ct/CT_small.dcm")).unwrap();
    let ts = src.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let position: Vec<f64> = src.element(tags::IMAGE_POSITION_PATIENT).unwrap().to_multi_float64().unwrap();
    let series_uid = new_uid();
    (0..n)
        .map(|z| {
            let mut obj: InMemDicomObject = src.clone().into_inner();
            let uid = new_uid();
            let pos = [position[0], position[1], position[2] + 2.5 * z as f64].map(|v| format!("{v}")).to_vec();
            obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid.as_str())));
            obj.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(series_uid.as_str())));
            obj.put(DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, PrimitiveValue::Strs(pos.into())));
            // File names in reverse: the series is ordered by position, not by name.
            let file = obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts.as_str())).unwrap();
            file.write_to_file(dir.join(format!("{}.dcm", n - z))).unwrap();
            uid
        })
        .collect()
}

fn tiny_run(dir: &Path) -> PathBuf {
    let mut ds = generate(&SynthConfig { count: 8, size: 32, seed: 1, ..Default::default() }).unwrap();
    ds.preprocess = Some(Preprocess { window: Some(Window::Lung), ..Default::default() });
    let data = dir.join("lung.npz");
    ds.save(&data).unwrap();
    let run = dir.join("run");
    let config = RunConfig {
        model: common::tiny_config(),
        train: TrainConfig { epochs: 1, batch_size: 4, val_fraction: 0.0, figure_images: 1, figure_samples: 1, ..Default::default() },
        ..Default::default()
    };
    train::train(TrainRequest { data, out: run.clone(), config, device: Device::flex(), resume: false, quiet: true }).unwrap();
    run
}

fn predict(run: &Path, input: &Path, out: &Path) -> ScanReport {
    let sampling = RunSampling { n: 2, checkpoint: train::Which::Last, batch_size: 8, ..RunSampling::for_run(run) };
    predict_files(&PredictRequest { review: false, ..PredictRequest::new(sampling, input.into(), out.into()) }, |_| {}).unwrap().remove(0)
}

fn text(obj: &InMemDicomObject, tag: dicom_object::Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

fn items(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Vec<InMemDicomObject> {
    obj.element(tag).unwrap().items().unwrap().to_vec()
}

/// The source SOP Instance UID each frame references, in frame order.
fn frame_sources(seg: &DefaultDicomObject) -> Vec<String> {
    items(seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .iter()
        .map(|f| {
            let derivation = &items(f, tags::DERIVATION_IMAGE_SEQUENCE)[0];
            text(&items(derivation, tags::SOURCE_IMAGE_SEQUENCE)[0], tags::REFERENCED_SOP_INSTANCE_UID)
        })
        .collect()
}

/// The Python that imports highdicom: APUNET_HIGHDICOM_PYTHON (set by .ci/run), else python3.
fn highdicom_python() -> Option<String> {
    let candidates = [std::env::var("APUNET_HIGHDICOM_PYTHON").ok(), Some("python3".into()), Some("/usr/bin/python3".into())];
    candidates.into_iter().flatten().find(|py| Command::new(py).args(["-c", "import highdicom"]).output().is_ok_and(|o| o.status.success()))
}

#[test]
fn predict_writes_dicom_seg_that_references_the_series_and_highdicom_reads() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let uids = series(&dir.path().join("series"), 3);
    let run = tiny_run(dir.path());
    let out = dir.path().join("pred");
    let report = predict(&run, &dir.path().join("series"), &out);
    let files = report.dicom_seg.clone().unwrap();
    assert_eq!(files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect::<Vec<_>>(), ["samples.seg.dcm", "mean.seg.dcm"]);

    // The NIfTI outputs step 2.5 mm between slices, as the series does.
    let nii = nifti::ReaderOptions::new().read_file(out.join("series/mean.nii.gz")).unwrap();
    let h = nifti::NiftiObject::header(&nii);
    let step = (h.srow_x[2].powi(2) + h.srow_y[2].powi(2) + h.srow_z[2].powi(2)).sqrt();
    assert!((h.pixdim[3] - 2.5).abs() < 1e-5 && (step - 2.5).abs() < 1e-5, "pixdim {:?}, z column length {step}", h.pixdim);
    let ct = open_file(dir.path().join("series/1.dcm")).unwrap();
    let mut npz = read_npz(&out.join("series/samples.npz")).unwrap();
    let (Some(NpyArray::U8(samples)), Some(NpyArray::F32(mean))) = (npz.remove("samples"), npz.remove("mean")) else {
        panic!("samples.npz")
    };
    let (rows, cols) = (128, 128);
    // Binary: a segment per sample, a frame per segment and slice, bits packed across frames.
    let seg = open_file(&files[0]).unwrap();
    assert_eq!(text(&seg, tags::SOP_CLASS_UID), uids::SEGMENTATION_STORAGE);
    assert_eq!((text(&seg, tags::MODALITY), text(&seg, tags::SEGMENTATION_TYPE)), ("SEG".into(), "BINARY".into()));
    assert_eq!(text(&seg, tags::NUMBER_OF_FRAMES), "6");
    assert_eq!(items(&seg, tags::SEGMENT_SEQUENCE).len(), 2);
    for tag in [tags::STUDY_INSTANCE_UID, tags::FRAME_OF_REFERENCE_UID, tags::PATIENT_ID] {
        assert_eq!(text(&seg, tag), text(&ct, tag), "{tag} is the source's");
    }
    for tag in [tags::SOP_INSTANCE_UID, tags::SERIES_INSTANCE_UID] {
        assert_ne!(text(&seg, tag), text(&ct, tag), "{tag} is new");
    }
    let refs = &items(&seg, tags::REFERENCED_SERIES_SEQUENCE)[0];
    assert_eq!(text(refs, tags::SERIES_INSTANCE_UID), text(&ct, tags::SERIES_INSTANCE_UID));
    assert_eq!(frame_sources(&seg), [uids.clone(), uids.clone()].concat(), "segment-major frames over the slices in position order");
    let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let mut marked = vec![vec![0.0f64; 3]; 2];
    for (k, per_slice) in marked.iter_mut().enumerate() {
        for (z, count) in per_slice.iter_mut().enumerate() {
            let frame = (k * 3 + z) * rows * cols;
            for p in 0..rows * cols {
                let bit = (bits[(frame + p) / 8] >> ((frame + p) % 8)) & 1;
                assert_eq!(bit, samples[[z, k, p / cols, p % cols]], "sample {k}, slice {z}, pixel {p}");
                *count += f64::from(bit) * (p + 1) as f64;
            }
        }
    }
    // Round trip through apunet's own SEG reader.
    let back = apunet::data::seg_read::read_seg(&files[0]).unwrap();
    assert_eq!(back.segments.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
    for (f, (segment, uid, m)) in back.frames.iter().enumerate() {
        let (k, z) = (usize::from(*segment) - 1, f % 3);
        assert_eq!((k, uid), (f / 3, &uids[z]));
        assert!(m.iter().enumerate().all(|(p, &v)| v == samples[[z, k, p / cols, p % cols]]), "frame {f} read back");
    }
    // Fractional: the mean probability in 255ths.
    let fseg = open_file(&files[1]).unwrap();
    assert_eq!(
        (text(&fseg, tags::SEGMENTATION_TYPE), text(&fseg, tags::SEGMENTATION_FRACTIONAL_TYPE)),
        ("FRACTIONAL".into(), "PROBABILITY".into())
    );
    let bytes = fseg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let worst = (0..3 * rows * cols)
        .map(|i| (f32::from(bytes[i]) / 255.0 - mean[[i / (rows * cols), (i / cols) % rows, i % cols]]).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 0.5 / 255.0 + 1e-6, "mean probability stored {worst} off");
    assert_eq!(frame_sources(&fseg), uids);

    // highdicom, an independent reader, finds the same frames, segments, references and pixels.
    let Some(py) = highdicom_python() else {
        assert!(std::env::var_os("CI").is_none(), "CI must read the SEG with highdicom: .ci/run installs it");
        eprintln!("SKIPPED the highdicom half: no Python with highdicom (pip install highdicom, or run .ci/run)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/read_seg.py");
    let read = |f: &Path| -> serde_json::Value {
        let o = Command::new(&py).arg(&script).arg(f).args(&uids).output().unwrap();
        assert!(o.status.success(), "highdicom could not read {}: {}", f.display(), String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let b = read(&files[0]);
    assert_eq!((b["type"].as_str(), b["frames"].as_u64(), b["segments"].as_u64()), (Some("BINARY"), Some(6), Some(2)));
    assert_eq!(b["labels"], serde_json::json!(["apunet sample 1", "apunet sample 2"]));
    let referenced: Vec<String> = b["referenced"].as_array().unwrap().iter().map(|u| u[2].as_str().unwrap().to_string()).collect();
    assert_eq!(referenced.iter().collect::<std::collections::BTreeSet<_>>(), uids.iter().collect());
    assert_eq!(b["study"].as_str().unwrap(), text(&ct, tags::STUDY_INSTANCE_UID));
    assert_eq!(b["per_segment"], serde_json::json!(marked), "highdicom's pixels per segment and slice");
    let f = read(&files[1]);
    assert_eq!((f["type"].as_str(), f["frames"].as_u64(), f["segments"].as_u64()), (Some("FRACTIONAL"), Some(3), Some(1)));
    for z in 0..3 {
        let want: f64 = (0..rows * cols).map(|p| f64::from(bytes[z * rows * cols + p]) / 255.0 * (p + 1) as f64).sum();
        assert!(
            (f["per_segment"][0][z].as_f64().unwrap() - want).abs() < 1e-6 * want.max(1.0),
            "slice {z} (highdicom rescales in float32): {} against {want}",
            f["per_segment"][0][z]
        );
    }
}

#[test]
fn a_source_without_uids_gets_no_seg_and_says_why() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut obj: InMemDicomObject = open_file(common::shared_data().join("ct/CT_small.dcm")).unwrap().into_inner();
    obj.remove_element(tags::STUDY_INSTANCE_UID);
    let bare = dir.path().join("bare.dcm");
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap().write_to_file(&bare).unwrap();
    let run = tiny_run(dir.path());
    let report = predict(&run, &bare, &dir.path().join("pred"));
    let why = report.dicom_seg.unwrap_err();
    assert!(why.contains("Study Instance UID"), "{why}");
    assert!(dir.path().join("pred/bare/mean.nii.gz").exists() && !dir.path().join("pred/bare/mean.seg.dcm").exists());
}

/// Expert k's mask on slice z of `depth` at (y, x), as tests/fixtures/write_seg.py draws it.
fn drawn(k: usize, z: usize, depth: usize, y: usize, x: usize) -> u8 {
    if k == 2 && z == depth - 1 {
        return 0;
    }
    u8::from((40 + 4 * k + z..60 + 4 * k + z).contains(&y) && (50 + 2 * k..70 + 2 * k + z).contains(&x))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn import(root: &Path) -> (apunet::data::import::Imported, apunet::data::Dataset, serde_json::Value) {
    let out = root.join("ds.npz");
    let done = apunet::data::import::import_folder(&apunet::data::import::ImportSettings {
        input: root.into(),
        out: out.clone(),
        crop: 64,
        background_share: 0.0,
        windows: vec![Window::Lung],
        context_slices: 0,
        clahe: false,
        units: None,
        spacing: None,
        seed: 0,
    })
    .unwrap();
    let manifest = serde_json::from_str(&std::fs::read_to_string(out.with_extension("manifest.json")).unwrap()).unwrap();
    (done, apunet::data::Dataset::load(&out).unwrap(), manifest)
}

#[test]
fn import_takes_experts_from_dicom_seg_written_by_another_tool() {
    let Some(py) = highdicom_python() else {
        assert!(std::env::var_os("CI").is_none(), "CI must write the SEG fixtures with highdicom: .ci/run installs it");
        eprintln!("SKIPPED: no Python with highdicom to write the SEG fixtures (pip install highdicom, or run .ci/run)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/write_seg.py");
    let write = |series: &Path, labels: &Path, case: &str, layout: &str| {
        let o = Command::new(&py).arg(&script).args([series, labels]).args([case, layout]).output().unwrap();
        assert!(o.status.success(), "write_seg.py: {}", String::from_utf8_lossy(&o.stderr));
    };
    for layout in ["per-expert", "per-case"] {
        let root = dir.path().join(layout);
        series(&root.join("images/case"), 3);
        write(&root.join("images/case"), &root.join("labels"), "case", layout);
        let (_, ds, manifest) = import(&root);
        assert_eq!((ds.len(), ds.annotators()), (3, 2), "{layout}: a lesion crop per slice, an annotator per SEG or segment");
        for i in 0..3 {
            let c = &manifest["crops"][i];
            let (z, y0, x0) =
                (c["slice"].as_u64().unwrap() as usize, c["y0"].as_u64().unwrap() as usize, c["x0"].as_u64().unwrap() as usize);
            for k in 0..2 {
                let bad =
                    (0..64 * 64).filter(|&p| ds.masks[[i, k, p / 64, p % 64]] != drawn(k + 1, z, 3, y0 + p / 64, x0 + p % 64)).count();
                assert_eq!(bad, 0, "{layout}: expert {} on slice {z} differs in {bad} pixels", k + 1);
            }
        }
    }
    // A SEG drawn on another series: its frames reference slices this case does not have.
    let root = dir.path().join("mixed");
    copy_dir(&dir.path().join("per-case/images/case"), &root.join("images/good"));
    std::fs::create_dir_all(root.join("labels")).unwrap();
    std::fs::copy(dir.path().join("per-case/labels/case.seg.dcm"), root.join("labels/good.seg.dcm")).unwrap();
    series(&root.join("images/other"), 3);
    std::fs::copy(dir.path().join("per-case/labels/case.seg.dcm"), root.join("labels/other.seg.dcm")).unwrap();
    // A SEG apunet cannot read (16 bits per pixel) skips its case, saying why.
    copy_dir(&dir.path().join("per-case/images/case"), &root.join("images/wide"));
    let mut wide: InMemDicomObject = open_file(dir.path().join("per-case/labels/case.seg.dcm")).unwrap().into_inner();
    wide.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)));
    let file = wide.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap();
    file.write_to_file(root.join("labels/wide.dcm")).unwrap();
    let (done, ds, _) = import(&root);
    assert_eq!(ds.len(), 3);
    let reasons: Vec<(&str, &str)> = done.skipped.iter().map(|s| (s.case.as_str(), s.reason.as_str())).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|(c, r)| *c == "other" && r.contains("not among the case's CT slices")), "{reasons:?}");
    assert!(reasons.iter().any(|(c, r)| *c == "wide" && r.contains("16 bits per pixel")), "{reasons:?}");
}

#[test]
fn every_frame_carries_its_masks_bits_for_both_readers() {
    // Masks that mark about a third of the pixels in a pattern of their own per segment and
    // slice, written straight through the SEG writer (predict's tiny models mark nothing).
    let dir = tempfile::tempdir().unwrap();
    let uids = series(&dir.path().join("series"), 3);
    let scan = apunet::data::scan::read_scan(&dir.path().join("series")).unwrap();
    let apunet::data::scan::Geometry::Dicom(sources) = &scan.geometry else { panic!("DICOM geometry") };
    let marks = |k: usize, z: usize, p: usize| (p * (k + 2) + z * 7 + p / 128).is_multiple_of(3);
    let frames: Vec<Vec<Vec<f32>>> =
        (0..2).map(|k| (0..3).map(|z| (0..128 * 128).map(|p| f32::from(u8::from(marks(k, z, p)))).collect()).collect()).collect();
    let path = dir.path().join("s.seg.dcm");
    let labels = vec!["a".to_string(), "b".to_string()];
    let req = apunet::data::dicom_seg::SegRequest {
        kind: apunet::data::dicom_seg::SegKind::Binary,
        sources,
        labels,
        frames: &frames,
        rows: 128,
        columns: 128,
        series_description: "test".into(),
    };
    apunet::data::dicom_seg::write_seg(&path, &req).unwrap();
    let back = apunet::data::seg_read::read_seg(&path).unwrap();
    assert_eq!(back.frames.len(), 6);
    for (f, (segment, uid, m)) in back.frames.iter().enumerate() {
        let (k, z) = (usize::from(*segment) - 1, f % 3);
        assert_eq!((k, uid), (f / 3, &uids[z]));
        assert!(m.iter().enumerate().all(|(p, &v)| (v == 1) == marks(k, z, p)), "frame {f} read back by apunet");
    }
    let Some(py) = highdicom_python() else {
        assert!(std::env::var_os("CI").is_none(), "CI must read the SEG with highdicom: .ci/run installs it");
        eprintln!("SKIPPED the highdicom half: no Python with highdicom");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/read_seg.py");
    let o = Command::new(&py).arg(&script).arg(&path).args(&uids).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want: Vec<Vec<f64>> =
        (0..2).map(|k| (0..3).map(|z| (0..128 * 128).filter(|&p| marks(k, z, p)).map(|p| (p + 1) as f64).sum()).collect()).collect();
    assert_eq!(v["per_segment"], serde_json::json!(want), "highdicom's pixels per segment and slice");
}

/// Expert k's mask on slice z at (y, x), as tests/fixtures/write_rtstruct.py contours it.
fn contoured(k: usize, z: usize, y: usize, x: usize) -> u8 {
    let inside = |rows: (usize, usize), cols: (usize, usize)| (rows.0..=rows.1).contains(&y) && (cols.0..=cols.1).contains(&x);
    match k {
        1 => u8::from(inside((40 + z, 59 + z), (50, 69))),
        _ => u8::from(inside((45, 64), (55, 74 + z)) && !(z == 1 && inside((50, 54), (60, 64)))),
    }
}

#[test]
fn import_rasterises_experts_contours_from_an_rtstruct() {
    let Some(py) = highdicom_python() else {
        assert!(std::env::var_os("CI").is_none(), "CI must write the RTSTRUCT fixture with pydicom: .ci/run installs it");
        eprintln!("SKIPPED: no Python with pydicom and highdicom to write the RTSTRUCT fixture");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rt");
    series(&root.join("images/case"), 3);
    std::fs::create_dir_all(root.join("labels")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/write_rtstruct.py");
    let o = Command::new(&py).arg(&script).arg(root.join("images/case")).arg(root.join("labels/case.dcm")).output().unwrap();
    assert!(o.status.success(), "write_rtstruct.py: {}", String::from_utf8_lossy(&o.stderr));
    let (_, ds, manifest) = import(&root);
    assert_eq!((ds.len(), ds.annotators()), (3, 2), "a lesion crop per slice, an annotator per ROI");
    for i in 0..3 {
        let c = &manifest["crops"][i];
        let (z, y0, x0) = (c["slice"].as_u64().unwrap() as usize, c["y0"].as_u64().unwrap() as usize, c["x0"].as_u64().unwrap() as usize);
        for k in 0..2 {
            let bad = (0..64 * 64).filter(|&p| ds.masks[[i, k, p / 64, p % 64]] != contoured(k + 1, z, y0 + p / 64, x0 + p % 64)).count();
            assert_eq!(bad, 0, "expert {} on slice {z} differs in {bad} pixels", k + 1);
        }
    }
}
