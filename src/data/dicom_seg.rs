//! DICOM SEG out: a prediction over DICOM CT written as Segmentation objects (PS3.3 A.51) that
//! open over the scan in a viewer: one frame per segment and slice, each referencing its source
//! image by SOP Instance UID, in the source's frame of reference, with new UIDs of its own.

use std::path::Path;

use anyhow::{Result, bail};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use super::dicom::{COPIED, CtSlice};

/// Binary segments (a sample is a mask) or fractional ones (a probability, 0-255).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegKind {
    Binary,
    /// Probability: a value v in [0, 1] is stored as round(255 v).
    Probability,
}

/// What to write: `frames[segment][slice]`, each rows x columns values in [0, 1], over
/// `sources` (one single-frame CT object per slice, in the same order).
pub struct SegRequest<'a> {
    pub kind: SegKind,
    pub sources: &'a [CtSlice],
    /// One label per segment ("sample 1", "mean probability").
    pub labels: Vec<String>,
    pub frames: &'a [Vec<Vec<f32>>],
    pub rows: usize,
    pub columns: usize,
    pub series_description: String,
}

/// A new UID under the UUID-derived root 2.25 (PS3.5 B.2).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>())
}

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A coded concept: value, scheme, meaning.
fn code(tag: Tag, (value, scheme, meaning): (&str, &str, &str)) -> DataElement<InMemDicomObject> {
    seq(
        tag,
        vec![item(vec![
            el(tags::CODE_VALUE, VR::SH, value),
            el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
            el(tags::CODE_MEANING, VR::LO, meaning),
        ])],
    )
}

fn ds(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|v| format!("{v}")).collect())
}

/// Today's date and time in UTC as DICOM DA and TM.
fn now() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}{m:02}{d:02}"), format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60))
}

/// Checks that every source can be referenced: a single-frame object with UIDs and geometry.
fn check_sources(r: &SegRequest<'_>) -> Result<()> {
    let first = r.sources.first().ok_or_else(|| anyhow::anyhow!("no source slices to reference"))?;
    if r.sources.iter().any(|s| s.frames != 1) {
        bail!("the source is a multi-frame object; DICOM SEG output references single-frame slices only");
    }
    if r.frames.iter().any(|f| f.len() != r.sources.len() || f.iter().any(|p| p.len() != r.rows * r.columns)) {
        bail!("the SEG frames do not match {} source slices of {}x{}", r.sources.len(), r.rows, r.columns);
    }
    for s in r.sources {
        let missing = [
            ("SOP Class UID", s.ids.sop_class_uid.is_none()),
            ("SOP Instance UID", s.ids.sop_instance_uid.is_none()),
            ("Study Instance UID", s.ids.study_instance_uid.is_none()),
            ("Series Instance UID", s.ids.series_instance_uid.is_none()),
            ("Image Position (Patient)", s.position.is_none()),
            ("Image Orientation (Patient)", s.orientation.is_none()),
            ("Pixel Spacing", s.pixel_spacing.is_none()),
        ];
        if let Some((name, _)) = missing.iter().find(|m| m.1) {
            bail!("a source slice has no {name}, which a DICOM SEG must reference");
        }
        if (s.rows, s.columns) != (r.rows, r.columns) || s.ids.study_instance_uid != first.ids.study_instance_uid {
            bail!("the source slices differ in size or study; a DICOM SEG covers one series");
        }
    }
    Ok(())
}

/// The SEG's pixel data: bits packed across frames, first pixel in the lowest bit (binary), or
/// one byte per pixel (probability).
fn pixel_data(r: &SegRequest<'_>) -> Vec<u8> {
    let values = r.frames.iter().flatten().flatten();
    let mut out = match r.kind {
        SegKind::Binary => {
            let mut bits = vec![0u8; (r.frames.len() * r.sources.len() * r.rows * r.columns).div_ceil(8)];
            for (i, &v) in values.enumerate() {
                if v > 0.5 {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
            bits
        }
        SegKind::Probability => values.map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect(),
    };
    // OB values have even length.
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// The per-frame functional groups of segment `s` on source slice `z`.
fn frame_groups(s: usize, z: usize, src: &CtSlice) -> InMemDicomObject {
    let ids = &src.ids;
    let source = item(vec![
        el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, ids.sop_class_uid.clone().unwrap_or_default()),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, ids.sop_instance_uid.clone().unwrap_or_default()),
        code(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, ("121322", "DCM", "Source image for image processing operation")),
        // The frame is on the source's own pixel grid (predict brings its outputs back there).
        el(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
    ]);
    let derivation =
        item(vec![seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source]), code(tags::DERIVATION_CODE_SEQUENCE, ("113076", "DCM", "Segmentation"))]);
    item(vec![
        seq(tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]),
        seq(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![item(vec![el(tags::DIMENSION_INDEX_VALUES, VR::UL, PrimitiveValue::U32([s as u32 + 1, z as u32 + 1].into()))])],
        ),
        seq(
            tags::PLANE_POSITION_SEQUENCE,
            vec![item(vec![el(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&src.position.unwrap_or_default()))])],
        ),
        seq(tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![item(vec![el(tags::REFERENCED_SEGMENT_NUMBER, VR::US, s as u16 + 1)])]),
    ])
}

fn segment_item(number: usize, label: &str) -> InMemDicomObject {
    item(vec![
        el(tags::SEGMENT_NUMBER, VR::US, number as u16),
        el(tags::SEGMENT_LABEL, VR::LO, label),
        el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, "apunet"),
        code(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, ("49755003", "SCT", "Morphologically Altered Structure")),
        code(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, ("52988006", "SCT", "Lesion")),
    ])
}

/// The dimensions frames are indexed by: segment, then position.
fn dimensions(org: &str) -> Vec<DataElement<InMemDicomObject>> {
    let index = |pointer: Tag, group: Tag| {
        item(vec![
            el(tags::DIMENSION_ORGANIZATION_UID, VR::UI, org),
            el(tags::DIMENSION_INDEX_POINTER, VR::AT, PrimitiveValue::Tags(vec![pointer].into())),
            el(tags::FUNCTIONAL_GROUP_POINTER, VR::AT, PrimitiveValue::Tags(vec![group].into())),
        ])
    };
    vec![
        seq(tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![item(vec![el(tags::DIMENSION_ORGANIZATION_UID, VR::UI, org)])]),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                index(tags::REFERENCED_SEGMENT_NUMBER, tags::SEGMENT_IDENTIFICATION_SEQUENCE),
                index(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE),
            ],
        ),
    ]
}

/// Writes the Segmentation object to `path` (atomically).
pub fn write_seg(path: &Path, r: &SegRequest<'_>) -> Result<()> {
    check_sources(r)?;
    let first = &r.sources[0];
    let ids = &first.ids;
    let (date, time) = now();
    let mut obj = InMemDicomObject::new_empty();
    for (tag, vr) in COPIED {
        obj.put(el(tag, vr, ids.copied.iter().find(|c| c.0 == tag).map_or(String::new(), |c| c.1.clone())));
    }
    let (binary, frames) = (r.kind == SegKind::Binary, r.frames.len() * r.sources.len());
    let sop_instance = new_uid();
    let elements = vec![
        el(tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_instance.as_str()),
        el(tags::STUDY_INSTANCE_UID, VR::UI, ids.study_instance_uid.clone().unwrap_or_default()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, new_uid()),
        el(tags::MODALITY, VR::CS, "SEG"),
        el(tags::SERIES_NUMBER, VR::IS, "300"),
        el(tags::SERIES_DESCRIPTION, VR::LO, r.series_description.as_str()),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::FRAME_OF_REFERENCE_UID, VR::UI, ids.frame_of_reference_uid.clone().unwrap_or_else(new_uid)),
        el(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        el(tags::MANUFACTURER, VR::LO, "apunet"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "apunet"),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time.as_str()),
        el(tags::IMAGE_TYPE, VR::CS, PrimitiveValue::Strs(["DERIVED", "PRIMARY"].map(String::from).to_vec().into())),
        el(tags::CONTENT_LABEL, VR::CS, "APUNET"),
        el(tags::CONTENT_DESCRIPTION, VR::LO, r.series_description.as_str()),
        el(tags::CONTENT_CREATOR_NAME, VR::PN, ""),
        el(tags::SAMPLES_PER_PIXEL, VR::US, 1u16),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::ROWS, VR::US, r.rows as u16),
        el(tags::COLUMNS, VR::US, r.columns as u16),
        el(tags::BITS_ALLOCATED, VR::US, if binary { 1u16 } else { 8 }),
        el(tags::BITS_STORED, VR::US, if binary { 1u16 } else { 8 }),
        el(tags::HIGH_BIT, VR::US, if binary { 0u16 } else { 7 }),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::SEGMENTATION_TYPE, VR::CS, if binary { "BINARY" } else { "FRACTIONAL" }),
        el(tags::NUMBER_OF_FRAMES, VR::IS, frames.to_string()),
        seq(tags::SEGMENT_SEQUENCE, r.labels.iter().enumerate().map(|(k, l)| segment_item(k + 1, l)).collect()),
        seq(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![item(vec![
                seq(
                    tags::PIXEL_MEASURES_SEQUENCE,
                    vec![item(vec![
                        el(tags::PIXEL_SPACING, VR::DS, ds(&first.pixel_spacing.unwrap_or([1.0, 1.0]))),
                        el(tags::SLICE_THICKNESS, VR::DS, ds(&[ids.slice_thickness.unwrap_or(1.0)])),
                    ])],
                ),
                seq(
                    tags::PLANE_ORIENTATION_SEQUENCE,
                    vec![item(vec![el(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&first.orientation.unwrap_or_default()))])],
                ),
            ])],
        ),
        seq(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            (0..r.frames.len()).flat_map(|s| r.sources.iter().enumerate().map(move |(z, src)| frame_groups(s, z, src))).collect(),
        ),
        seq(tags::REFERENCED_SERIES_SEQUENCE, vec![referenced_series(r.sources)]),
        el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixel_data(r).into())),
    ];
    for e in elements.into_iter().chain(dimensions(&new_uid())) {
        obj.put(e);
    }
    if r.kind == SegKind::Probability {
        obj.put(el(tags::SEGMENTATION_FRACTIONAL_TYPE, VR::CS, "PROBABILITY"));
        obj.put(el(tags::MAXIMUM_FRACTIONAL_VALUE, VR::US, 255u16));
    }
    let file = obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))?;
    crate::fsio::write_atomic_with(path, |tmp| Ok(file.write_to_file(tmp)?))
}

/// The series and instances every frame derives from.
fn referenced_series(sources: &[CtSlice]) -> InMemDicomObject {
    let instances = sources
        .iter()
        .map(|s| {
            item(vec![
                el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, s.ids.sop_class_uid.clone().unwrap_or_default()),
                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, s.ids.sop_instance_uid.clone().unwrap_or_default()),
            ])
        })
        .collect();
    item(vec![
        el(tags::SERIES_INSTANCE_UID, VR::UI, sources[0].ids.series_instance_uid.clone().unwrap_or_default()),
        seq(tags::REFERENCED_INSTANCE_SEQUENCE, instances),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_new_and_valid() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.starts_with("2.25.") && a[5..].bytes().all(|c| c.is_ascii_digit()), "{a}");
        let (date, time) = now();
        assert!(date.len() == 8 && date.as_str() > "20240101" && time.len() == 6, "{date} {time}");
    }
}
