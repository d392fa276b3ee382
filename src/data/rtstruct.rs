//! RTSTRUCT in: experts' contours (closed planar polygons in patient coordinates, mm) rasterised
//! onto the CT slices they were drawn on: the slice a contour references by SOP Instance UID,
//! else the slice its plane lies in. A pixel is inside when its centre is (even-odd rule, so a
//! contour inside another is a hole).

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{InMemDicomObject, Tag, open_file};

use super::dicom::{CtSlice, text};
use super::scan::{Geometry, Scan, Slice, Units};

/// One closed contour: its points (x, y, z in mm) and the slice it names, if any.
#[derive(Debug, Clone)]
struct Contour {
    points: Vec<[f64; 3]>,
    slice_uid: Option<String>,
}

/// A structure set's ROIs: number, name and contours.
#[derive(Debug, Clone)]
pub struct StructureSet {
    pub rois: Vec<(u64, String)>,
    contours: Vec<(u64, Contour)>,
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.items()).unwrap_or(&[])
}

/// Reads an RT Structure Set's ROIs and closed planar contours.
pub fn read_rtstruct(path: &Path) -> Result<StructureSet> {
    let name = path.display();
    let obj = open_file(path).map_err(|e| anyhow!("{name}: not a readable DICOM file: {e}"))?;
    if text(&obj, tags::SOP_CLASS_UID).as_deref() != Some(uids::RT_STRUCTURE_SET_STORAGE) {
        bail!("{name}: not an RT Structure Set (SOP Class UID {:?})", text(&obj, tags::SOP_CLASS_UID));
    }
    let number = |o: &InMemDicomObject, tag| o.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok());
    let rois = items(&obj, tags::STRUCTURE_SET_ROI_SEQUENCE)
        .iter()
        .filter_map(|r| Some((number(r, tags::ROI_NUMBER)?, text(r, tags::ROI_NAME).unwrap_or_default())))
        .collect();
    let mut contours = Vec::new();
    for rc in items(&obj, tags::ROI_CONTOUR_SEQUENCE) {
        let roi = number(rc, tags::REFERENCED_ROI_NUMBER).ok_or_else(|| anyhow!("{name}: an ROI contour names no ROI number"))?;
        for c in items(rc, tags::CONTOUR_SEQUENCE) {
            match text(c, tags::CONTOUR_GEOMETRIC_TYPE).as_deref() {
                Some("CLOSED_PLANAR") => {}
                // Points and open polylines enclose no area.
                _ => continue,
            }
            let data = c.element_opt(tags::CONTOUR_DATA).ok().flatten().and_then(|e| e.to_multi_float64().ok()).unwrap_or_default();
            if data.len() < 9 || data.len() % 3 != 0 {
                bail!(
                    "{name}: ROI {roi} has a closed contour of {} coordinates; it needs x, y, z triplets for 3 points or more",
                    data.len()
                );
            }
            let points = data.chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
            let slice_uid = items(c, tags::CONTOUR_IMAGE_SEQUENCE).first().and_then(|i| text(i, tags::REFERENCED_SOP_INSTANCE_UID));
            contours.push((roi, Contour { points, slice_uid }));
        }
    }
    Ok(StructureSet { rois, contours })
}

/// The slice a contour lies on: the one it names, else the one whose plane holds its first
/// point (within half the slice step).
fn slice_of(c: &Contour, sources: &[CtSlice], source: &str) -> Result<usize> {
    if let Some(uid) = &c.slice_uid {
        return sources
            .iter()
            .position(|s| s.ids.sop_instance_uid.as_ref() == Some(uid))
            .ok_or_else(|| anyhow!("{source}: a contour references SOP Instance UID {uid}, which is not among the case's CT slices"));
    }
    let along = |s: &CtSlice, p: [f64; 3]| -> Option<f64> {
        let o = s.orientation?;
        let n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
        Some(p[0] * n[0] + p[1] * n[1] + p[2] * n[2] - s.normal_position()?)
    };
    let step = match sources {
        [a, b, ..] => (b.normal_position().unwrap_or(0.0) - a.normal_position().unwrap_or(0.0)).abs(),
        _ => f64::INFINITY,
    };
    let best = sources.iter().enumerate().filter_map(|(z, s)| Some((z, along(s, c.points[0])?.abs()))).min_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some((z, d)) if d <= step.max(1e-3) / 2.0 => Ok(z),
        _ => bail!("{source}: a contour at z = {} mm lies on none of the case's CT slices", c.points[0][2]),
    }
}

/// Even-odd fill of `poly` (pixel coordinates: column, row) at pixel centres.
fn fill(poly: &[(f64, f64)], h: usize, w: usize, out: &mut [u8]) {
    for y in 0..h {
        let yc = y as f64;
        let mut xs: Vec<f64> = Vec::new();
        for (i, &(x0, y0)) in poly.iter().enumerate() {
            let (x1, y1) = poly[(i + 1) % poly.len()];
            if (y0 <= yc) != (y1 <= yc) {
                xs.push(x0 + (yc - y0) / (y1 - y0) * (x1 - x0));
            }
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks(2).filter(|p| p.len() == 2) {
            let (from, to) = (pair[0].ceil().max(0.0) as usize, pair[1].floor().min(w as f64 - 1.0));
            if to < 0.0 {
                continue;
            }
            for x in from..=to as usize {
                out[y * w + x] ^= 1;
            }
        }
    }
}

impl StructureSet {
    /// The label map of ROI `roi` (every ROI when `None`) over `ct`'s slices, as 0/1 values.
    pub fn label_scan(&self, roi: Option<u64>, ct: &Scan, path: &Path) -> Result<Scan> {
        let name = path.display().to_string();
        let Geometry::Dicom(sources) = &ct.geometry else {
            bail!("{name} is an RTSTRUCT, which references DICOM slices, but {} is not DICOM", ct.source.display())
        };
        if sources.len() != ct.slices.len() {
            bail!("{name}: {} is a multi-frame object; RTSTRUCT labels are matched to single-frame slices", ct.source.display());
        }
        let (h, w) = ct.slices[0].size();
        let mut maps = vec![vec![0u8; h * w]; sources.len()];
        for (r, c) in self.contours.iter().filter(|(r, _)| roi.is_none_or(|want| *r == want)) {
            let z = slice_of(c, sources, &name)?;
            let s = &sources[z];
            let (Some(o), Some(p), Some(sp)) = (s.orientation, s.position, s.pixel_spacing) else {
                bail!("{name}: ROI {r}: slice {z} has no position, orientation or pixel spacing to place contours by");
            };
            // Patient mm to (column, row): along the row direction by the column spacing, along
            // the column direction by the row spacing.
            let to_pixel = |q: &[f64; 3]| {
                let d = [q[0] - p[0], q[1] - p[1], q[2] - p[2]];
                ((d[0] * o[0] + d[1] * o[1] + d[2] * o[2]) / sp[1], (d[0] * o[3] + d[1] * o[4] + d[2] * o[5]) / sp[0])
            };
            let poly: Vec<(f64, f64)> = c.points.iter().map(to_pixel).collect();
            let mut one = vec![0u8; h * w];
            fill(&poly, h, w, &mut one);
            // Contours of one slice combine even-odd: a contour inside another is a hole.
            maps[z].iter_mut().zip(one).for_each(|(m, v)| *m ^= v);
        }
        let slices = maps
            .into_iter()
            .map(|m| Slice { height: h, width: w, values: m.into_iter().map(f32::from).collect(), units: Units::Unit, file_window: None })
            .collect();
        Ok(Scan { source: path.to_path_buf(), slices, geometry: Geometry::Plain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_square_fills_the_pixel_centres_inside_it_and_a_hole_stays_empty() {
        let mut m = vec![0u8; 10 * 10];
        fill(&[(1.5, 1.5), (6.5, 1.5), (6.5, 4.5), (1.5, 4.5)], 10, 10, &mut m);
        let inside: Vec<usize> = (0..100).filter(|&i| m[i] == 1).collect();
        let want: Vec<usize> = (2..=4).flat_map(|y| (2..=6).map(move |x| y * 10 + x)).collect();
        assert_eq!(inside, want);
        fill(&[(2.5, 2.5), (4.5, 2.5), (4.5, 3.5), (2.5, 3.5)], 10, 10, &mut m);
        assert_eq!((m[3 * 10 + 3], m[3 * 10 + 4], m[3 * 10 + 2]), (0, 0, 1), "the inner square is a hole");
    }
}
