//! DICOM SEG in: experts' masks as radiologists' tools (3D Slicer, OHIF) save them, matched to
//! the CT slices they were drawn on by the SOP Instance UID each frame references.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{InMemDicomObject, Tag, open_file};

use super::dicom::text;
use super::scan::{Geometry, Scan, Slice, Units};

/// A Segmentation object's frames, each with its segment and source image.
#[derive(Debug, Clone)]
pub struct SegFrames {
    pub rows: usize,
    pub columns: usize,
    /// Segment number and label, as the SEG lists them.
    pub segments: Vec<(u16, String)>,
    /// (segment number, referenced SOP Instance UID, rows x columns of 0/1).
    pub frames: Vec<(u16, String, Vec<u8>)>,
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<u64> {
    obj.element_opt(tag).ok().flatten()?.to_int::<u64>().ok()
}

/// The first item of sequence `tag`.
fn first(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(tag).ok().flatten()?.items()?.first()
}

/// Frame `f`'s segment number and source SOP Instance UID, from its functional groups (the
/// shared groups where every frame has the same).
fn frame_refs(f: &InMemDicomObject, shared: Option<&InMemDicomObject>) -> Option<(u16, String)> {
    let group = |tag| first(f, tag).or_else(|| shared.and_then(|s| first(s, tag)));
    let segment = int(group(tags::SEGMENT_IDENTIFICATION_SEQUENCE)?, tags::REFERENCED_SEGMENT_NUMBER)? as u16;
    let source = first(group(tags::DERIVATION_IMAGE_SEQUENCE)?, tags::SOURCE_IMAGE_SEQUENCE)?;
    Some((segment, text(source, tags::REFERENCED_SOP_INSTANCE_UID)?))
}

/// Reads a DICOM SEG (binary, or fractional thresholded at half its maximum).
pub fn read_seg(path: &Path) -> Result<SegFrames> {
    let name = path.display();
    let obj = open_file(path).map_err(|e| anyhow!("{name}: not a readable DICOM file: {e}"))?;
    if text(&obj, tags::SOP_CLASS_UID).as_deref() != Some(uids::SEGMENTATION_STORAGE) {
        bail!("{name}: not a DICOM SEG (SOP Class UID {:?})", text(&obj, tags::SOP_CLASS_UID));
    }
    let need = |tag, what: &str| int(&obj, tag).ok_or_else(|| anyhow!("{name}: the SEG has no {what}"));
    let (rows, columns) = (need(tags::ROWS, "Rows")? as usize, need(tags::COLUMNS, "Columns")? as usize);
    let count = int(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1) as usize;
    let bits = need(tags::BITS_ALLOCATED, "Bits Allocated")?;
    let cut = match (text(&obj, tags::SEGMENTATION_TYPE).as_deref(), bits) {
        (Some("BINARY"), 1) => 1u16,
        (Some("FRACTIONAL"), 8) => (int(&obj, tags::MAXIMUM_FRACTIONAL_VALUE).unwrap_or(255) as u16).div_ceil(2).max(1),
        (kind, _) => bail!("{name}: a {kind:?} SEG of {bits} bits per pixel; apunet reads binary (1 bit) and fractional (8 bits) ones"),
    };
    let pixels = obj.element(tags::PIXEL_DATA).map_err(|_| anyhow!("{name}: the SEG has no pixel data"))?;
    if pixels.fragments().is_some() {
        bail!("{name}: the SEG's pixel data are compressed; save it uncompressed (explicit VR little endian)");
    }
    let data = pixels.to_bytes().map_err(|e| anyhow!("{name}: unreadable pixel data: {e}"))?;
    let per = rows * columns;
    let have = if bits == 1 { data.len() * 8 } else { data.len() };
    if have < count * per {
        bail!("{name}: {count} frames of {rows}x{columns} need more pixel data than the {} bytes present", data.len());
    }
    let value = |i: usize| if bits == 1 { u16::from((data[i / 8] >> (i % 8)) & 1) } else { u16::from(data[i]) };
    let shared = first(&obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let groups = obj.element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).ok().flatten().and_then(|e| e.items()).unwrap_or(&[]);
    if groups.len() != count {
        bail!("{name}: {count} frames but {} per-frame functional groups", groups.len());
    }
    let mut frames = Vec::with_capacity(count);
    for (f, g) in groups.iter().enumerate() {
        let (segment, uid) = frame_refs(g, shared).ok_or_else(|| {
            anyhow!("{name}: frame {} names no segment or source image; apunet matches SEG frames to CT slices by SOP Instance UID", f + 1)
        })?;
        frames.push((segment, uid, (0..per).map(|p| u8::from(value(f * per + p) >= cut)).collect()));
    }
    let segments = obj
        .element_opt(tags::SEGMENT_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
        .iter()
        .filter_map(|s| Some((int(s, tags::SEGMENT_NUMBER)? as u16, text(s, tags::SEGMENT_LABEL).unwrap_or_default())))
        .collect();
    Ok(SegFrames { rows, columns, segments, frames })
}

impl SegFrames {
    /// The label map of `segment` (every segment when `None`) over `ct`'s slices, as a scan of
    /// 0/1 values; `ct` must be DICOM whose slices the SEG's frames reference.
    pub fn label_scan(&self, segment: Option<u16>, ct: &Scan, path: &Path) -> Result<Scan> {
        let name = path.display().to_string();
        let Geometry::Dicom(sources) = &ct.geometry else {
            bail!("{name} is a DICOM SEG, which references DICOM slices, but {} is not DICOM", ct.source.display())
        };
        if sources.len() != ct.slices.len() {
            bail!("{name}: {} is a multi-frame object; SEG labels are matched to single-frame slices", ct.source.display());
        }
        let uids: Vec<String> = sources.iter().map(|s| s.ids.sop_instance_uid.clone().unwrap_or_default()).collect();
        let (h, w) = ct.slices[0].size();
        if (self.rows, self.columns) != (h, w) {
            bail!("{name}: frames of {}x{} but the CT slices are {h}x{w}", self.rows, self.columns);
        }
        let numbers: Vec<u16> = match segment {
            Some(s) => vec![s],
            None => self.segments.iter().map(|s| s.0).collect(),
        };
        let mut maps = vec![vec![0u8; h * w]; uids.len()];
        for s in numbers {
            for (acc, m) in maps.iter_mut().zip(self.masks(s, &uids, &name)?) {
                acc.iter_mut().zip(m).for_each(|(a, v)| *a |= v);
            }
        }
        let slices = maps
            .into_iter()
            .map(|m| Slice { height: h, width: w, values: m.into_iter().map(f32::from).collect(), units: Units::Unit, file_window: None })
            .collect();
        Ok(Scan { source: path.to_path_buf(), slices, geometry: Geometry::Plain })
    }

    /// Segment `segment`'s mask on each slice of a scan whose slices are the SOP instances
    /// `slice_uids` (in order): frames on one slice are united, slices without a frame empty.
    pub fn masks(&self, segment: u16, slice_uids: &[String], source: &str) -> Result<Vec<Vec<u8>>> {
        let index: BTreeMap<&str, usize> = slice_uids.iter().enumerate().map(|(z, u)| (u.as_str(), z)).collect();
        let mut out = vec![vec![0u8; self.rows * self.columns]; slice_uids.len()];
        for (s, uid, m) in self.frames.iter().filter(|f| f.0 == segment) {
            let z = *index.get(uid.as_str()).ok_or_else(|| {
                anyhow!("{source}: segment {s} references SOP Instance UID {uid}, which is not among the case's CT slices")
            })?;
            out[z].iter_mut().zip(m).for_each(|(o, &v)| *o |= v);
        }
        Ok(out)
    }
}
