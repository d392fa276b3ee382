use apunet::data::Dataset;
use apunet::data::import::{ImportSettings as ImportArgs, import_folder};
use apunet::data::intensity::Window;
use image::{GrayImage, Luma};

fn blob(w: u32, h: u32, cx: i32, cy: i32, r: i32, on: u8, off: u8) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let d = (x as i32 - cx).pow(2) + (y as i32 - cy).pow(2);
        Luma([if d <= r * r { on } else { off }])
    })
}

#[test]
fn import_crops_around_lesions_and_reports_bad_cases() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    for (case, cx, cy) in [("c1", 30, 40), ("c2", 70, 20)] {
        blob(100, 90, cx, cy, 6, 90, 20).save(root.join(format!("images/{case}.png"))).unwrap();
        for (k, r) in [(0, 5), (1, 6), (2, 4)] {
            blob(100, 90, cx, cy, r, 255, 0).save(root.join(format!("labels/{case}_A{k}.png"))).unwrap();
        }
    }
    // Mis-sized labels and missing labels are reported, never resized or dropped silently.
    blob(100, 90, 50, 50, 6, 90, 20).save(root.join("images/bad.png")).unwrap();
    for k in 0..3 {
        blob(64, 64, 30, 30, 5, 255, 0).save(root.join(format!("labels/bad_A{k}.png"))).unwrap();
    }
    blob(100, 90, 50, 50, 6, 90, 20).save(root.join("images/nolabels.png")).unwrap();
    // An unreadable scan is one more skipped case, not the end of the import.
    std::fs::write(root.join("images/broken.png"), b"not a png").unwrap();
    for k in 0..3 {
        blob(100, 90, 50, 50, 5, 255, 0).save(root.join(format!("labels/broken_A{k}.png"))).unwrap();
    }
    // So is an unreadable label.
    blob(100, 90, 50, 50, 6, 90, 20).save(root.join("images/badlabel.png")).unwrap();
    for k in 0..2 {
        blob(100, 90, 50, 50, 5, 255, 0).save(root.join(format!("labels/badlabel_A{k}.png"))).unwrap();
    }
    std::fs::write(root.join("labels/badlabel_A2.png"), b"\x89PNG broken").unwrap();

    let out = root.join("ds.npz");
    import_folder(&ImportArgs {
        input: root.to_path_buf(),
        out: out.clone(),
        crop: 32,
        background_share: 0.5,
        windows: vec![Window::Lung],
        context_slices: 0,
        clahe: true,
        units: None,
        spacing: None,
        seed: 1,
    })
    .unwrap();
    let ds = Dataset::load(&out).unwrap();
    assert_eq!(ds.annotators(), 3);
    assert_eq!((ds.height(), ds.width()), (32, 32));
    assert_eq!(ds.len(), 4, "one lesion crop and one background crop per good case");
    let mut cases = ds.series.clone();
    cases.dedup();
    assert_eq!(cases, vec!["c1", "c2"]);
    // PNG scans are intensities: the record says so rather than naming a window never applied.
    assert!(ds.preprocess.as_ref().is_some_and(|p| p.clahe && p.window.is_none()), "{:?}", ds.preprocess);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("manifest.json")).unwrap()).unwrap();
    let crops = manifest["crops"].as_array().unwrap();
    assert_eq!(crops.len(), 4);
    let lesion = crops.iter().filter(|c| c["kind"] == "lesion").count();
    assert_eq!(lesion, 2);
    for (i, c) in crops.iter().enumerate() {
        let area: u32 = (0..3)
            .map(|k| ds.masks.index_axis(ndarray::Axis(0), i).index_axis(ndarray::Axis(0), k).iter().map(|&v| v as u32).sum::<u32>())
            .sum();
        if c["kind"] == "lesion" {
            assert!(area > 0, "lesion crop {i} has no label");
        } else {
            assert_eq!(area, 0, "background crop {i} has labels");
        }
        assert!(c["image"].as_str().unwrap().ends_with(".png"));
    }
    let skipped = manifest["skipped"].as_array().unwrap();
    let reasons: Vec<String> = skipped.iter().map(|s| format!("{}: {}", s["case"], s["reason"])).collect();
    assert_eq!(skipped.len(), 4, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("broken") && r.contains("broken.png")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("badlabel") && r.contains("badlabel_A2.png")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("bad") && r.contains("64x64")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("nolabels") && r.contains("no labels")), "{reasons:?}");

    let e = import_folder(&ImportArgs {
        input: root.join("images"),
        out: root.join("x.npz"),
        crop: 32,
        background_share: 0.2,
        windows: vec![Window::Lung],
        context_slices: 0,
        clahe: false,
        units: None,
        spacing: None,
        seed: 0,
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("images/ and labels/"));
}
