//! DICOM CT slices in Hounsfield units: pixel data decoded (native, JPEG, JPEG 2000 through the
//! pure-Rust openjp2) and passed through the modality LUT (rescale slope and intercept).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::open_file;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

/// HU outside this range means a broken rescale, not anatomy.
pub const HU_RANGE: (f32, f32) = (-4000.0, 40000.0);

/// One decoded DICOM object: a slice, or all frames of a multi-frame (enhanced) CT.
#[derive(Debug, Clone)]
pub struct CtSlice {
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    /// Row-major Hounsfield units, frame after frame: [frames * rows * columns].
    pub hu: Vec<f32>,
    pub modality: Option<String>,
    /// The file's own WindowCenter / WindowWidth, when it has them.
    pub window: Option<(f64, f64)>,
    pub slope: f64,
    pub intercept: f64,
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub transfer_syntax: String,
    /// Who and what the object is: a DICOM SEG derived from it references and copies these.
    pub ids: DicomIds,
}

/// A source object's identity, and the patient and study attributes a derived object copies.
#[derive(Debug, Clone, Default)]
pub struct DicomIds {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub frame_of_reference_uid: Option<String>,
    pub slice_thickness: Option<f64>,
    /// The patient and general study modules' attributes ([`COPIED`]) as the file holds them.
    pub copied: Vec<(dicom_object::Tag, String)>,
}

/// Patient and study attributes a derived object repeats from its source (each is type 2 in
/// the segmentation IOD: present, empty where the source has none).
pub const COPIED: [(dicom_object::Tag, VR); 9] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// Attribute `tag` as trimmed text; `None` when absent or empty.
pub(super) fn text(obj: &dicom_object::InMemDicomObject, tag: dicom_object::Tag) -> Option<String> {
    let s = obj.element_opt(tag).ok().flatten()?.to_str().ok()?.trim_end_matches(['\0', ' ']).to_string();
    (!s.is_empty()).then_some(s)
}

fn ids(obj: &dicom_object::DefaultDicomObject) -> DicomIds {
    DicomIds {
        sop_class_uid: text(obj, tags::SOP_CLASS_UID),
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID),
        study_instance_uid: text(obj, tags::STUDY_INSTANCE_UID),
        series_instance_uid: text(obj, tags::SERIES_INSTANCE_UID),
        frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID),
        slice_thickness: floats(obj, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
        copied: COPIED.iter().filter_map(|&(t, _)| text(obj, t).map(|v| (t, v))).collect(),
    }
}

impl CtSlice {
    pub fn hu_range(&self) -> (f32, f32) {
        self.hu.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }

    /// Position along the slice normal, for ordering a series.
    pub fn normal_position(&self) -> Option<f64> {
        let (p, o) = (self.position?, self.orientation?);
        let n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
        Some(p[0] * n[0] + p[1] * n[1] + p[2] * n[2])
    }
}

fn floats(obj: &dicom_object::DefaultDicomObject, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_multi_float64().ok())
}

/// A DICOM file's SOP Class UID (`None` for a file that is not readable DICOM): tells a SEG from
/// an RTSTRUCT from an image.
pub fn sop_class(path: &Path) -> Option<String> {
    open_file(path).ok().and_then(|o| text(&o, tags::SOP_CLASS_UID))
}

/// Reads a DICOM file and converts every frame to HU; each frame gets its own rescale where
/// the per-frame functional groups give one (dicom-pixeldata resolves them per frame).
pub fn read_dicom(path: &Path) -> Result<CtSlice> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{name}: not a readable DICOM file: {e}"))?;
    super::dicom_guard::check_lengths(&bytes).map_err(|e| anyhow!("{name}: not a readable DICOM file: {e}"))?;
    let obj = open_file(path).map_err(|e| anyhow!("{name}: not a readable DICOM file: {e}"))?;
    check_pixel_size(&obj, bytes.len()).map_err(|e| anyhow!("{name}: {e}"))?;
    let transfer_syntax = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let modality = obj.element_opt(tags::MODALITY).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
    if let Some(m) = modality.as_deref().filter(|m| *m != "CT") {
        tracing::warn!("{name}: modality is {m}, not CT; Hounsfield windowing may not apply");
    }
    let pixels =
        obj.decode_pixel_data().map_err(|e| anyhow!("{name}: cannot decode the pixel data (transfer syntax {transfer_syntax}): {e}"))?;
    let rescale = pixels.rescale().map_err(|e| anyhow!("{name}: bad rescale attributes: {e}"))?;
    let (slope, intercept) = rescale.first().map_or((1.0, 0.0), |r| (r.slope, r.intercept));
    let (rows, columns) = (pixels.rows() as usize, pixels.columns() as usize);
    let frames = pixels.number_of_frames().max(1) as usize;
    let mut hu: Vec<f32> = Vec::with_capacity(frames * rows * columns);
    for f in 0..frames {
        let frame: Vec<f32> = pixels
            .to_vec_frame_with_options(f as u32, &ConvertOptions::new().with_modality_lut(ModalityLutOption::Default))
            .map_err(|e| anyhow!("{name}: cannot convert frame {f} to Hounsfield units: {e}"))?;
        if frame.len() != rows * columns {
            bail!("{name}: decoded {} values for a {rows}x{columns} frame (multi-sample images are not CT)", frame.len());
        }
        hu.extend(frame);
    }
    let slice = CtSlice {
        rows,
        columns,
        frames,
        hu,
        modality,
        window: pixels.window().ok().flatten().and_then(|w| w.first().map(|w| (w.center, w.width))),
        slope,
        intercept,
        position: floats(&obj, tags::IMAGE_POSITION_PATIENT).and_then(|v| v.try_into().ok()),
        orientation: floats(&obj, tags::IMAGE_ORIENTATION_PATIENT).and_then(|v| v.try_into().ok()),
        pixel_spacing: floats(&obj, tags::PIXEL_SPACING).and_then(|v| v.try_into().ok()),
        transfer_syntax,
        ids: ids(&obj),
    };
    let (lo, hi) = slice.hu_range();
    if !lo.is_finite() || lo < HU_RANGE.0 || hi > HU_RANGE.1 {
        bail!(
            "{name}: RescaleSlope (0028,1053) = {slope} and RescaleIntercept (0028,1052) = {intercept} give HU in \
             [{lo}, {hi}], outside the plausible [{}, {}]; the rescale tags are wrong",
            HU_RANGE.0,
            HU_RANGE.1
        );
    }
    Ok(slice)
}

/// The decoded frames must fit what the file could hold: compression never beats about 1,000:1,
/// so Rows x Columns x frames that would need more is a corrupt header, refused before decoding.
fn check_pixel_size(obj: &dicom_object::DefaultDicomObject, file_len: usize) -> Result<()> {
    let int = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok());
    let dims = [tags::ROWS, tags::COLUMNS, tags::NUMBER_OF_FRAMES, tags::SAMPLES_PER_PIXEL].map(|t| int(t).unwrap_or(1).max(1));
    let bytes = dims.iter().try_fold(8u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
    let warranted = (file_len as u64).saturating_mul(1100).saturating_add(1 << 24);
    if bytes > warranted {
        bail!(
            "Rows {} x Columns {} x {} frame(s) x {} sample(s) cannot come from a file of {file_len} bytes: the header is corrupt",
            dims[0],
            dims[1],
            dims[2],
            dims[3]
        );
    }
    Ok(())
}

/// Reads every DICOM file in a folder and orders the slices along the slice normal
/// (file names say nothing about anatomy). Slices without geometry keep file-name order.
pub fn read_series(dir: &Path) -> Result<Vec<CtSlice>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut read = Vec::new();
    for f in &files {
        match read_dicom(f) {
            Ok(s) => read.push((f.clone(), s)),
            Err(e) => tracing::warn!("skipping {}: {e:#}", f.display()),
        }
    }
    if read.is_empty() {
        bail!("{} holds no readable DICOM slices", dir.display());
    }
    check_one_size(dir, &read)?;
    let mut slices: Vec<CtSlice> = read.into_iter().map(|(_, s)| s).collect();
    if slices.iter().all(|s| s.normal_position().is_some()) {
        slices.sort_by(|a, b| a.normal_position().partial_cmp(&b.normal_position()).unwrap_or(std::cmp::Ordering::Equal));
    }
    Ok(slices)
}

/// A series is one volume: slices of another size are an error that names them (a scout image
/// or a second series copied into the folder), never a stretched or mangled volume.
fn check_one_size(dir: &Path, read: &[(std::path::PathBuf, CtSlice)]) -> Result<()> {
    let mut sizes: Vec<((usize, usize), Vec<&std::path::Path>)> = Vec::new();
    for (p, s) in read {
        let key = (s.rows, s.columns);
        match sizes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(p),
            None => sizes.push((key, vec![p])),
        }
    }
    if sizes.len() == 1 {
        return Ok(());
    }
    sizes.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let ((r, c), main) = (&sizes[0].0, sizes[0].1.len());
    let odd: Vec<String> =
        sizes[1..].iter().flat_map(|((rr, cc), v)| v.iter().map(move |p| format!("{} ({rr}x{cc})", p.display()))).collect();
    bail!(
        "{}: the slices differ in size: {main} {} {r}x{c} but {} {} not: {}; a series folder must hold one \
         series; move the odd files out (or predict them one by one)",
        dir.display(),
        if main == 1 { "is" } else { "are" },
        odd.len(),
        if odd.len() == 1 { "is" } else { "are" },
        odd.join(", ")
    )
}
