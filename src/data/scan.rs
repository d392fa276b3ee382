//! Whole scans for inference and import: DICOM (one file or a series folder), NIfTI
//! (.nii, .nii.gz) and 8/16-bit grayscale PNG/TIFF, as 2D slices with the geometry needed to
//! write masks back in the input's space.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, ReaderOptions};

use super::dicom::{self, CtSlice};
use super::intensity::Window;
pub use super::preprocess::{Preprocess, Units};

/// Where the pixels came from, for writing results back.
#[derive(Debug, Clone)]
pub enum Geometry {
    /// Each source object's header (pixels dropped), in the scan's slice order; a multi-frame
    /// object is one entry for all its slices.
    Dicom(Vec<CtSlice>),
    Nifti(Box<NiftiHeader>),
    Plain,
}

/// One 2D slice: raw values (HU for CT) row-major.
#[derive(Debug, Clone)]
pub struct Slice {
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
    /// Hounsfield units (a window applies) or intensities in [0, 1].
    pub units: Units,
    pub file_window: Option<(f64, f64)>,
}

impl Slice {
    /// (height, width).
    pub fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// This slice, whose pixels are `from` mm apart (rows, columns), resampled bilinearly to
    /// `mm` mm pixels over the same extent.
    pub fn resampled(&self, from: (f64, f64), mm: f64) -> Slice {
        let size = (super::resample::resampled_len(self.height, from.0, mm), super::resample::resampled_len(self.width, from.1, mm));
        let values = super::resample::linear(&self.values, (self.height, self.width), size);
        Slice { height: size.0, width: size.1, values, ..self.clone() }
    }

    /// One channel in [0, 1]: HU through `window`, intensities as they are; then CLAHE.
    fn channel(&self, window: Option<Window>, p: &Preprocess) -> Result<Vec<f32>> {
        let x = match (self.units, window) {
            (Units::Hu, Some(w)) => w.apply(&self.values, self.file_window),
            (Units::Hu, None) => bail!("a slice in Hounsfield units needs a window to become network input"),
            (Units::Unit, _) => self.values.clone(),
        };
        Ok(if p.clahe { super::clahe::clahe(&x, self.height, self.width, p.clahe_clip) } else { x })
    }
}

/// Network input for slice `z` of one volume's `slices`: `p.channels()` planes in [0, 1], in
/// the order [`Preprocess::channels`] states. Neighbours past either end are mirrored (a single
/// slice is its own neighbour); intensities fill every window's planes as they are.
pub fn network_input(slices: &[Slice], z: usize, p: &Preprocess) -> Result<Vec<f32>> {
    let (k, depth) = (p.context_slices as isize, slices.len());
    let size = slices[z].size();
    let windows = p.windows();
    let mut out = Vec::with_capacity(p.channels() * size.0 * size.1);
    for slot in 0..1 + p.extra_windows.len() {
        for o in -k..=k {
            let sl = &slices[mirror(z as isize + o, depth)];
            if sl.size() != size {
                bail!(
                    "slice {} is {}x{} but slice {z} is {}x{}: neighbouring slices must share one size",
                    mirror(z as isize + o, depth),
                    sl.height,
                    sl.width,
                    size.0,
                    size.1
                );
            }
            out.extend(sl.channel(windows.get(slot).copied(), p)?);
        }
    }
    Ok(out)
}

/// The plane a reader looks at: `slice` through the first window (as the overlay shows it).
pub fn display_plane(slice: &Slice, p: &Preprocess) -> Result<Vec<f32>> {
    slice.channel(p.window, p)
}

/// Index `i` reflected into 0..len at both ends (-1 -> 1, len -> len - 2).
pub fn mirror(i: isize, len: usize) -> usize {
    if len < 2 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    (if m < len as isize { m } else { period - m }) as usize
}

#[derive(Debug, Clone)]
pub struct Scan {
    pub source: PathBuf,
    pub slices: Vec<Slice>,
    pub geometry: Geometry,
}

impl Scan {
    /// In-plane pixel spacing in mm (between rows, between columns), where the file states it:
    /// DICOM's Pixel Spacing, NIfTI's pixdim; PNG and TIFF have none.
    pub fn spacing(&self) -> Option<(f64, f64)> {
        let ok = |(r, c): (f64, f64)| (r.is_finite() && c.is_finite() && r > 0.0 && c > 0.0).then_some((r, c));
        match &self.geometry {
            Geometry::Dicom(s) => s[0].pixel_spacing.map(|p| (p[0], p[1])).and_then(ok),
            Geometry::Nifti(h) => ok((h.pixdim[2] as f64, h.pixdim[1] as f64)),
            Geometry::Plain => None,
        }
    }
}

fn is_nifti(p: &Path) -> bool {
    let s = p.to_string_lossy().to_lowercase();
    s.ends_with(".nii") || s.ends_with(".nii.gz")
}

fn ext(p: &Path) -> String {
    p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default()
}

/// Whether `read_scan` knows the file type.
pub fn is_supported(p: &Path) -> bool {
    is_nifti(p) || matches!(ext(p).as_str(), "dcm" | "dicom" | "png" | "tif" | "tiff")
}

/// The file name without .nii.gz / .dcm / .png.
pub fn stem(p: &Path) -> String {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "scan".into());
    for suffix in [".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".tiff", ".tif"] {
        if name.to_lowercase().ends_with(suffix) {
            return name[..name.len() - suffix.len()].to_string();
        }
    }
    name
}

/// A scan with its units decided from the file (DICOM: HU; PNG/TIFF: intensities; NIfTI: its
/// header and values, see [`nifti_units`]).
pub fn read_scan(path: &Path) -> Result<Scan> {
    read_scan_as(path, None)
}

/// A scan whose units the user may state (`--units`); a statement a file type cannot hold is
/// an error.
pub fn read_scan_as(path: &Path, units: Option<Units>) -> Result<Scan> {
    let scan = read_any(path, units)?;
    if let Some(u) = units
        && scan.slices.iter().any(|s| s.units != u)
    {
        bail!("{}: --units {}: this file type holds {} only", path.display(), format!("{u:?}").to_lowercase(), scan.slices[0].units);
    }
    // Read as the user said, intensities must lie in [0, 1] (detected ones always do).
    if units == Some(Units::Unit) {
        let values = scan.slices.iter().flat_map(|s| s.values.iter().copied());
        let (min, max) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
        if min < 0.0 || max > 1.0 {
            bail!("{}: read as intensities, but its values span [{min}, {max}], not [0, 1] (--units hu reads them as HU)", path.display());
        }
    }
    Ok(scan)
}

/// A label map (a mask per annotator): its values as stored (8/16-bit ones scaled), units
/// never asked; only which are above zero counts.
pub fn read_labels(path: &Path) -> Result<Scan> {
    read_any(path, Some(Units::Unit))
}

fn read_any(path: &Path, units: Option<Units>) -> Result<Scan> {
    if path.is_dir() {
        let slices = dicom::read_series(path)?;
        let geometry = Geometry::Dicom(slices.iter().map(|s| CtSlice { hu: Vec::new(), ..s.clone() }).collect());
        return Ok(Scan { source: path.to_path_buf(), slices: slices.into_iter().flat_map(dicom_slices).collect(), geometry });
    }
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    if is_nifti(path) {
        return read_nifti(path, units);
    }
    match ext(path).as_str() {
        "dcm" | "dicom" => {
            let s = dicom::read_dicom(path)?;
            let geometry = Geometry::Dicom(vec![CtSlice { hu: Vec::new(), ..s.clone() }]);
            Ok(Scan { source: path.to_path_buf(), slices: dicom_slices(s), geometry })
        }
        "png" | "tif" | "tiff" => Ok(Scan { source: path.to_path_buf(), slices: vec![read_gray(path)?], geometry: Geometry::Plain }),
        other => bail!("{}: unsupported file type '.{other}' (use .dcm, .nii, .nii.gz, .png, .tif)", path.display()),
    }
}

/// One slice per frame.
fn dicom_slices(s: CtSlice) -> Vec<Slice> {
    s.hu.chunks(s.rows * s.columns)
        .map(|f| Slice { height: s.rows, width: s.columns, values: f.to_vec(), units: Units::Hu, file_window: s.window })
        .collect()
}

/// 8- or 16-bit grayscale, scaled to [0, 1] by the type's range.
pub fn read_gray(path: &Path) -> Result<Slice> {
    let cannot = |e: &dyn std::fmt::Display| anyhow!("{}: cannot read image: {e}", path.display());
    let mut reader = image::ImageReader::open(path).map_err(|e| cannot(&e))?;
    // A header may declare any size: decode no more than the file could hold compressed.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_decoded_bytes(path));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| cannot(&e))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let values: Vec<f32> = match img {
        image::DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().map(|v| v as f32 / 255.0).collect(),
        image::DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().map(|v| v as f32 / 65535.0).collect(),
        other => {
            tracing::warn!("{}: colour image, using its luminance", path.display());
            other.to_luma16().into_raw().into_iter().map(|v| v as f32 / 65535.0).collect()
        }
    };
    Ok(Slice { height: h, width: w, values, units: Units::Unit, file_window: None })
}

/// A NIfTI volume as axial slices (index z), values scaled by scl_slope/scl_inter; its units
/// as `units` states, else as [`nifti_units`] reads them.
pub fn read_nifti(path: &Path, units: Option<Units>) -> Result<Scan> {
    check_nifti_size(path)?;
    let obj = ReaderOptions::new().read_file(path).map_err(|e| anyhow!("{}: not a readable NIfTI file: {e}", path.display()))?;
    let header = obj.header().clone();
    let vol = obj.into_volume().into_ndarray::<f32>().map_err(|e| anyhow!("{}: cannot read the NIfTI volume: {e}", path.display()))?;
    let shape = vol.shape().to_vec();
    let (nx, ny) = match shape.as_slice() {
        [x, y] | [x, y, _] | [x, y, _, 1] => (*x, *y),
        _ => bail!("{}: NIfTI volume of shape {shape:?}; expected 2D or 3D", path.display()),
    };
    let nz = if shape.len() >= 3 { shape[2] } else { 1 };
    // Index in place: the volume is in NIfTI's column-major layout.
    let at = |x: usize, y: usize, z: usize| match shape.len() {
        2 => vol[[x, y]],
        3 => vol[[x, y, z]],
        _ => vol[[x, y, z, 0]],
    };
    let (min, max) = vol.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let units = match units {
        Some(u) => u,
        None => nifti_units(&header, min, max).map_err(|e| anyhow!("{}: {e}", path.display()))?,
    };
    // 8- and 16-bit intensities scale by their type's range, as PNG's do.
    let scale = match (units, header.datatype) {
        (Units::Unit, 2) if max > 1.0 => 1.0 / 255.0,
        (Units::Unit, 512) if max > 1.0 => 1.0 / 65535.0,
        _ => 1.0,
    };
    let slices = (0..nz)
        .map(|z| {
            // Row y, column x: the image as radiology viewers show the array.
            let values = (0..ny).flat_map(|y| (0..nx).map(move |x| (x, y))).map(|(x, y)| at(x, y, z) * scale).collect();
            Slice { height: ny, width: nx, values, units, file_window: None }
        })
        .collect();
    Ok(Scan { source: path.to_path_buf(), slices, geometry: Geometry::Nifti(Box::new(header)) })
}

/// Whether a NIfTI holds HU or intensities, from its header and values together (not from the
/// minimum alone: a CT region without air has no value below zero):
/// - a description or intent name that says HU or Hounsfield: HU;
/// - values (after scl_slope/scl_inter) all in [0, 1]: intensities;
/// - 8-bit data: intensities (scaled by 255, as an 8-bit PNG);
/// - stored values rescaled by the header (CT kept as unsigned with an intercept), signed
///   integers or floats: HU (the range must be one CT can have; floats over a span under 200
///   may be z-scores and are ambiguous);
/// - unsigned 16/32-bit data without a rescale: ambiguous (CT stored with its offset dropped
///   looks the same as a 16-bit image), an error that asks for `--units`.
pub fn nifti_units(h: &NiftiHeader, min: f32, max: f32) -> Result<Units> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_lowercase();
    let says_hu = [text(&h.descrip), text(&h.intent_name)]
        .iter()
        .any(|t| t.contains("hounsfield") || t.split(|c: char| !c.is_alphanumeric()).any(|w| w == "hu"));
    let rescaled = h.scl_slope != 0.0 && (h.scl_slope != 1.0 || h.scl_inter != 0.0);
    let signed_or_float = matches!(h.datatype, 4 | 8 | 16 | 64 | 256 | 1024);
    let ask = "give --units hu or --units unit";
    if says_hu {
        return Ok(Units::Hu);
    }
    if (0.0..=1.0).contains(&min) && max <= 1.0 {
        return Ok(Units::Unit);
    }
    if h.datatype == 2 && !rescaled {
        return Ok(Units::Unit);
    }
    if rescaled || signed_or_float {
        if min < -32768.0 || max > 40_000.0 {
            bail!("values span [{min}, {max}], beyond what CT in HU holds, and not [0, 1] intensities; {ask}");
        }
        // Floats over a span of a few units are normalised intensities (z-scores), not HU.
        if matches!(h.datatype, 16 | 64) && !rescaled && max - min < 200.0 {
            bail!("float values over [{min}, {max}] may be normalised intensities or a narrow range of HU; {ask}");
        }
        return Ok(Units::Hu);
    }
    bail!(
        "cannot tell whether its values ([{min}, {max}], unsigned data type {} without a rescale) are HU stored \
         with an offset or image intensities; {ask}",
        h.datatype
    )
}

/// The most that a file of this size can decode to: deflate expands at most about 1,032:1.
pub fn max_decoded_bytes(path: &Path) -> u64 {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    len.saturating_mul(1100).saturating_add(1 << 20)
}

/// The header's dimensions and offset must fit in the file before the volume is read: a corrupt
/// header must not make the reader allocate gigabytes.
fn check_nifti_size(path: &Path) -> Result<()> {
    let bad = |what: String| anyhow!("{}: not a readable NIfTI file: {what}", path.display());
    let h = NiftiHeader::from_file(path).map_err(|e| bad(e.to_string()))?;
    let dims = h.dim().map_err(|e| bad(e.to_string()))?;
    let voxels = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or_else(|| bad("absurd dimensions".into()))?;
    let (bits_ok, offset_ok) = (h.bitpix > 0 && h.bitpix % 8 == 0, h.vox_offset.is_finite() && h.vox_offset >= 0.0);
    if !bits_ok || !offset_ok {
        return Err(bad(format!("bitpix {} / vox_offset {} are invalid", h.bitpix, h.vox_offset)));
    }
    let need = voxels.saturating_mul(h.bitpix as u64 / 8).saturating_add(h.vox_offset as u64);
    let gz = path.to_string_lossy().to_lowercase().ends_with(".gz");
    let have = if gz { max_decoded_bytes(path) } else { std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) };
    if need > have {
        return Err(bad(format!("the header declares {dims:?} voxels of {} bits ({need} bytes) but the file holds {have}", h.bitpix)));
    }
    Ok(())
}

/// A NIfTI header for `frames` volumes of `width` x `height` x `depth` in the scan's space: the
/// input's own header for NIfTI, an affine from the DICOM geometry (LPS to RAS), else identity.
pub fn output_header(geometry: &Geometry, width: usize, height: usize, depth: usize, frames: usize) -> NiftiHeader {
    let mut h = match geometry {
        Geometry::Nifti(h) => (**h).clone(),
        _ => NiftiHeader::default(),
    };
    if let Geometry::Dicom(series) = geometry {
        let s = &series[0];
        let (dy, dx) = s.pixel_spacing.map_or((1.0, 1.0), |p| (p[0], p[1]));
        let o = s.orientation.unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let p = s.position.unwrap_or([0.0; 3]);
        let n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
        // Between slices: the series' own step along the normal, else the slice thickness.
        let step = series.get(1).and_then(|b| Some(b.normal_position()? - s.normal_position()?)).filter(|d| d.abs() > 1e-6);
        let dz = step.or(s.ids.slice_thickness).unwrap_or(1.0);
        let row = |k: usize, sign: f64| -> [f32; 4] {
            [(sign * o[k] * dx) as f32, (sign * o[3 + k] * dy) as f32, (sign * n[k] * dz) as f32, (sign * p[k]) as f32]
        };
        h.srow_x = row(0, -1.0);
        h.srow_y = row(1, -1.0);
        h.srow_z = row(2, 1.0);
        h.sform_code = 1;
        h.qform_code = 0;
        h.pixdim = [1.0, dx as f32, dy as f32, dz.abs() as f32, 1.0, 1.0, 1.0, 1.0];
    }
    let rank = if frames > 1 { 4 } else { 3 };
    h.dim = [rank, width as u16, height as u16, depth as u16, frames.max(1) as u16, 1, 1, 1];
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h
}

/// Writes `frames[t][z]` row-major slices as NIfTI (x = column, y = row, z = slice, t = frame).
pub fn write_nifti<T>(path: &Path, header: &NiftiHeader, frames: &[Vec<Vec<T>>], height: usize, width: usize) -> Result<()>
where
    T: Copy + Default + nifti::DataElement + bytemuck::Pod,
{
    let depth = frames.first().map_or(0, Vec::len);
    let mut arr = ndarray::Array4::<T>::from_elem((width, height, depth, frames.len()), T::default());
    for (t, frame) in frames.iter().enumerate() {
        for (z, s) in frame.iter().enumerate() {
            for y in 0..height {
                for x in 0..width {
                    arr[[x, y, z, t]] = s[y * width + x];
                }
            }
        }
    }
    crate::fsio::write_atomic_with(path, |tmp| {
        let opts = nifti::writer::WriterOptions::new(tmp).reference_header(header);
        let result = if frames.len() == 1 { opts.write_nifti(&arr.index_axis(ndarray::Axis(3), 0)) } else { opts.write_nifti(&arr) };
        result.map_err(|e| anyhow!("{e}"))
    })
}
