//! The dataset every command shares: CT crops with several annotators' masks, in the
//! converted-LIDC npz layout (`images` [N,H,W] or [N,C,H,W] f32, `masks` [N,A,H,W] u8,
//! `series_uid` [N]). Channels are stacked windows or neighbouring slices (`import --windows`,
//! `--context-slices`); masks are per slice.

use std::path::Path;

use anyhow::{Result, bail};
use ndarray::{Array3, Array4, ArrayView3, Axis};

use super::npz::{self, NpyArray, NpzEntry};
use super::preprocess::Preprocess;

#[derive(Debug, Clone)]
pub struct Dataset {
    /// [N, C, H, W], intensities normalised to about [0, 1].
    pub images: Array4<f32>,
    /// [N, A, H, W], binary {0, 1}.
    pub masks: Array4<u8>,
    /// One series (patient/scan) id per image; splits never put a series on both sides.
    pub series: Vec<String>,
    /// Marks examples made by a generator (CycleGAN), never real scans.
    pub synthetic: Vec<bool>,
    /// How `apunet import` made the crops from scans (stored as JSON in the npz); `None`:
    /// unknown (the data never passed through `import`).
    pub preprocess: Option<Preprocess>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.images.shape()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn annotators(&self) -> usize {
        self.masks.shape()[1]
    }

    /// Input channels per example (stacked windows, neighbouring slices).
    pub fn channels(&self) -> usize {
        self.images.shape()[1]
    }

    pub fn height(&self) -> usize {
        self.images.shape()[2]
    }

    pub fn width(&self) -> usize {
        self.images.shape()[3]
    }

    /// The channel a reader looks at: the first window's own slice (its neighbours come
    /// before it under `--context-slices`).
    pub fn display_channel(&self) -> usize {
        self.preprocess.as_ref().map_or(0, |p| p.context_slices).min(self.channels() - 1)
    }

    /// [N, H, W]: every example's [`Self::display_channel`], for figures and review pages.
    pub fn display_images(&self) -> ArrayView3<'_, f32> {
        self.images.index_axis(Axis(1), self.display_channel())
    }

    /// A one-channel dataset from images [N, H, W].
    pub fn gray(images: Array3<f32>, masks: Array4<u8>, series: Option<Vec<String>>, source: &str) -> Result<Self> {
        Self::new(images.insert_axis(Axis(1)), masks, series, source)
    }

    /// Builds a dataset from images [N, C, H, W] and checks everything a user file can get wrong.
    pub fn new(images: Array4<f32>, masks: Array4<u8>, series: Option<Vec<String>>, source: &str) -> Result<Self> {
        let [n, c, h, w] = [images.shape()[0], images.shape()[1], images.shape()[2], images.shape()[3]];
        let ms = masks.shape();
        if n == 0 {
            bail!("{source}: 'images' is empty (shape {:?}); expected [N, H, W] or [N, C, H, W] with N >= 1", images.shape());
        }
        if c == 0 {
            bail!("{source}: 'images' has 0 channels (shape {:?}); expected [N, C, H, W] with C >= 1", images.shape());
        }
        if ms[1] == 0 {
            bail!("{source}: 'masks' has annotator count 0 (shape {ms:?}); expected [N, A, H, W] with A >= 1");
        }
        if ms[0] != n || ms[2] != h || ms[3] != w {
            bail!("{source}: 'masks' has shape {ms:?} but 'images' has shape {:?}; expected masks [{n}, A, {h}, {w}]", images.shape());
        }
        if let Some(bad) = images.iter().position(|v| !v.is_finite()) {
            let idx = bad / (c * h * w);
            bail!("{source}: image {idx} contains NaN or infinite pixels; clean the data first");
        }
        if let Some(bad) = images.iter().position(|v| !(0.0..=1.0).contains(v)) {
            let (lo, hi) = images.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
            bail!(
                "{source}: image {} has intensities outside [0, 1] (the data span [{lo}, {hi}]); apunet trains on \
                 windowed intensities in [0, 1]. For raw CT in Hounsfield units, build the dataset with \
                 `apunet import --window lung` (or mediastinum, W,L); otherwise rescale to [0, 1] first",
                bad / (c * h * w)
            );
        }
        if let Some(bad) = masks.iter().position(|&v| v > 1) {
            let idx = bad / (ms[1] * h * w);
            let v = masks.iter().nth(bad).copied().unwrap_or(0);
            bail!(
                "{source}: masks must be binary (0 or 1) but image {idx} has value {v} \
                 (for 0/255 masks, divide by 255 when exporting)"
            );
        }
        let series = match series {
            Some(s) if s.len() != n => {
                bail!("{source}: 'series_uid' has {} entries but there are {n} images", s.len())
            }
            Some(s) => s,
            // Without series ids each image is its own group.
            None => (0..n).map(|i| format!("image-{i}")).collect(),
        };
        // Row-major memory from here on: batches and metrics read it as flat slices.
        let (images, masks) = (images.as_standard_layout().into_owned(), masks.as_standard_layout().into_owned());
        Ok(Self { images, masks, series, synthetic: vec![false; n], preprocess: None })
    }

    /// Reads an npz, or LIDC crops as the PyTorch port's pickle or DeepMind's PNG folders hold
    /// them ([`super::lidc`]).
    pub fn load(path: &Path) -> Result<Self> {
        match super::lidc::detect(path) {
            Some(layout) => super::lidc::load(path, &layout),
            None => Self::load_npz(path),
        }
    }

    fn load_npz(path: &Path) -> Result<Self> {
        let src = path.display().to_string();
        let mut arrays = npz::read_npz(path)?;
        let images = match arrays.remove("images") {
            Some(NpyArray::F32(a)) => a,
            Some(NpyArray::U8(a)) => a.mapv(|v| v as f32 / 255.0),
            Some(other) => bail!("{src}: 'images' must be float, got {}", other.kind()),
            None => bail!("{src}: no 'images' array (found: {:?})", arrays.keys().collect::<Vec<_>>()),
        };
        let images = match images.ndim() {
            3 => images.insert_axis(Axis(1)).into_dimensionality::<ndarray::Ix4>()?,
            4 => images.into_dimensionality::<ndarray::Ix4>()?,
            _ => bail!("{src}: 'images' has shape {:?}; expected [N, H, W] or [N, C, H, W]", images.shape()),
        };
        let masks = match arrays.remove("masks") {
            Some(NpyArray::U8(a)) => a,
            Some(NpyArray::I64(a)) => {
                if let Some(v) = a.iter().find(|&&v| !(0..=1).contains(&v)) {
                    bail!("{src}: masks must be binary (0 or 1), found value {v}");
                }
                a.mapv(|v| v as u8)
            }
            Some(NpyArray::F32(a)) => {
                if let Some(v) = a.iter().find(|&&v| v != 0.0 && v != 1.0) {
                    bail!("{src}: masks must be binary (0 or 1), found value {v}");
                }
                a.mapv(|v| v as u8)
            }
            Some(other) => bail!("{src}: 'masks' must be numeric, got {}", other.kind()),
            None => bail!("{src}: no 'masks' array (found: {:?})", arrays.keys().collect::<Vec<_>>()),
        };
        let masks = match masks.ndim() {
            4 => masks.into_dimensionality::<ndarray::Ix4>()?,
            // A single annotator stored as [N, H, W].
            3 => masks.insert_axis(Axis(1)).into_dimensionality::<ndarray::Ix4>()?,
            _ => bail!("{src}: 'masks' has shape {:?}; expected [N, A, H, W]", masks.shape()),
        };
        let series = match arrays.remove("series_uid") {
            Some(NpyArray::Str(s, _)) => Some(s),
            Some(NpyArray::I64(a)) => Some(a.iter().map(|v| v.to_string()).collect()),
            Some(other) => bail!("{src}: 'series_uid' must be strings, got {}", other.kind()),
            None => None,
        };
        let mut ds = Self::new(images, masks, series, &src)?;
        if let Some(NpyArray::Str(s, _)) = arrays.remove("preprocess")
            && let Some(json) = s.first()
        {
            ds.preprocess = Some(serde_json::from_str(json).map_err(|e| anyhow::anyhow!("{src}: bad 'preprocess' record: {e}"))?);
        }
        if let Some(NpyArray::U8(s)) = arrays.remove("synthetic")
            && s.len() == ds.len()
        {
            ds.synthetic = s.iter().map(|&v| v != 0).collect();
        }
        Ok(ds)
    }

    /// Writes the npz; one-channel images as [N, H, W], the layout other tools expect.
    pub fn save(&self, path: &Path) -> Result<()> {
        let images = match self.channels() {
            1 => self.images.index_axis(Axis(1), 0).to_owned().into_dyn(),
            _ => self.images.clone().into_dyn(),
        };
        let masks = self.masks.clone().into_dyn();
        let synthetic = npz::array(&[self.len()], self.synthetic.iter().map(|&b| b as u8).collect())?;
        let preprocess: Vec<String> = self.preprocess.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        let mut entries = vec![
            ("images", NpzEntry::F32(&images)),
            ("masks", NpzEntry::U8(&masks)),
            ("series_uid", NpzEntry::Str(&self.series)),
            ("synthetic", NpzEntry::U8(&synthetic)),
        ];
        if !preprocess.is_empty() {
            entries.push(("preprocess", NpzEntry::Str(&preprocess)));
        }
        npz::write_npz(path, &entries)
    }

    /// This dataset followed by `other`'s examples, marked synthetic; sizes must match.
    pub fn append_synthetic(&self, other: &Dataset, other_name: &str) -> Result<Self> {
        let shape = |d: &Dataset| (d.channels(), d.height(), d.width(), d.annotators());
        if shape(other) != shape(self) {
            let (a, b) = (shape(other), shape(self));
            bail!(
                "{other_name}: examples are {}x{} with {} channels and {} annotators but the training data are {}x{} with {} and {}",
                a.1,
                a.2,
                a.0,
                a.3,
                b.1,
                b.2,
                b.0,
                b.3
            );
        }
        let images = ndarray::concatenate(Axis(0), &[self.images.view(), other.images.view()])?;
        let masks = ndarray::concatenate(Axis(0), &[self.masks.view(), other.masks.view()])?;
        let mut series = self.series.clone();
        series.extend(other.series.iter().map(|s| format!("synthetic:{s}")));
        let mut synthetic = self.synthetic.clone();
        synthetic.extend(std::iter::repeat_n(true, other.len()));
        Ok(Self { images, masks, series, synthetic, preprocess: self.preprocess.clone() })
    }

    /// The central `size` x `size` of every crop (DeepMind's 180-px LIDC crops are cut to 128
    /// this way for training).
    pub fn center_crop(&self, size: usize) -> Result<Self> {
        let (h, w) = (self.height(), self.width());
        if size > h || size > w {
            bail!("cannot cut {size}x{size} from {h}x{w} crops");
        }
        let (y0, x0) = ((h - size) / 2, (w - size) / 2);
        let images = self.images.slice(ndarray::s![.., .., y0..y0 + size, x0..x0 + size]).to_owned();
        let masks = self.masks.slice(ndarray::s![.., .., y0..y0 + size, x0..x0 + size]).to_owned();
        Ok(Self { images, masks, series: self.series.clone(), synthetic: self.synthetic.clone(), preprocess: self.preprocess.clone() })
    }

    /// The examples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Self {
        Self {
            images: self.images.select(Axis(0), idx),
            masks: self.masks.select(Axis(0), idx),
            series: idx.iter().map(|&i| self.series[i].clone()).collect(),
            synthetic: idx.iter().map(|&i| self.synthetic[i]).collect(),
            preprocess: self.preprocess.clone(),
        }
    }
}
