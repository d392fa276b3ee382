//! Data in and out: the npz format, the synthetic generator, augmentation, splits, batches.

pub mod augment;
pub mod batch;
pub mod clahe;
pub mod dataset;
pub mod dicom;
pub mod dicom_guard;
pub mod dicom_seg;
pub mod head_ct;
pub mod import;
pub mod intensity;
pub mod lidc;
pub mod masks;
pub mod npz;
pub mod pickle;
pub mod preprocess;
pub mod resample;
pub mod rtstruct;
pub mod scan;
pub mod seg_read;
pub mod split;
pub mod synth;

pub use batch::{AnnotatorChoice, Batch};
pub use dataset::Dataset;
