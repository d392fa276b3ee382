//! Every reader gets at least 1,000 generated bad files: no panic, no allocation larger than the
//! file could warrant, and an error that names the file. Counts are printed for the README.

use crate::common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use apunet::data::Dataset;
use apunet::data::dicom::read_dicom;
use apunet::data::npz::{self, NpzEntry};
use apunet::data::scan::{self, Geometry, read_scan};
use apunet::jobs::evaluate::score_files;
use ndarray::{Array3, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Records the largest single allocation made by the current thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new)));
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Deflate expands at most about 1,032:1: nothing a file of n bytes holds can need more.
fn warranted(file_len: usize) -> usize {
    file_len * 1100 + (16 << 20)
}

#[derive(Default, Debug)]
struct Tally {
    files: usize,
    errors: usize,
    accepted: usize,
}

/// Feeds one file to `read`: it must not panic, must not allocate beyond `warranted`, and an
/// error must name the file.
fn feed(path: &Path, tally: &mut Tally, read: &dyn Fn(&Path) -> anyhow::Result<()>) {
    let len = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
    LARGEST.with(|m| m.set(0));
    let result = catch_unwind(AssertUnwindSafe(|| read(path)));
    let largest = LARGEST.with(|m| m.get());
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let kept = std::env::temp_dir().join(format!("apunet-fuzz-{name}"));
    let keep = || {
        let _ = std::fs::copy(path, &kept);
        kept.display().to_string()
    };
    assert!(largest <= warranted(len), "{name}: allocated {largest} bytes for a {len}-byte file (kept at {})", keep());
    match result {
        Err(_) => panic!("{name}: the reader panicked (kept at {})", keep()),
        Ok(Err(e)) => {
            let text = format!("{e:#}");
            assert!(text.contains(&name), "{name}: the error does not name the file: {text} (kept at {})", keep());
            tally.errors += 1;
        }
        Ok(Ok(())) => tally.accepted += 1,
    }
    tally.files += 1;
}

/// Mutations of a valid file: truncations, flipped bytes, overwritten runs and spliced
/// integers (huge lengths, zero, all-ones) at random places.
fn mutate(base: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.gen_range(0..5) {
        0 => b.truncate(rng.gen_range(0..base.len())),
        1 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        2 => {
            let i = rng.gen_range(0..b.len());
            let n = rng.gen_range(1..64).min(b.len() - i);
            rng.fill(&mut b[i..i + n]);
        }
        3 => {
            let v: u32 = [0, u32::MAX, 0x7FFF_FFFF, 0xFFFF, 65535 * 65535, rng.r#gen()][rng.gen_range(0..6)];
            let i = rng.gen_range(0..b.len().saturating_sub(4).max(1));
            for (k, byte) in v.to_le_bytes().iter().enumerate() {
                if i + k < b.len() {
                    b[i + k] = *byte;
                }
            }
        }
        _ => {
            let i = rng.gen_range(0..b.len());
            let extra: Vec<u8> = (0..rng.gen_range(1..256)).map(|_| rng.r#gen()).collect();
            b.splice(i..i, extra);
        }
    }
    b
}

/// Mutations aimed at the header: the first `head` bytes only.
fn mutate_head(base: &[u8], head: usize, rng: &mut StdRng) -> Vec<u8> {
    let head = head.min(base.len());
    let mut b = mutate(&base[..head], rng);
    b.extend_from_slice(&base[head..]);
    b
}

fn run(dir: &Path, label: &str, bases: &[(&str, Vec<u8>, usize)], count: usize, read: &dyn Fn(&Path) -> anyhow::Result<()>) -> Tally {
    let mut rng = StdRng::seed_from_u64(label.len() as u64 * 7919);
    let mut tally = Tally::default();
    for k in 0..count {
        let (ext, base, head) = &bases[k % bases.len()];
        let bytes = if k % 2 == 0 { mutate(base, &mut rng) } else { mutate_head(base, *head, &mut rng) };
        let path = dir.join(format!("{label}-{k:05}.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        feed(&path, &mut tally, read);
        let _ = std::fs::remove_file(&path);
    }
    println!("fuzz {label}: {} files, {} clear errors, {} read as valid", tally.files, tally.errors, tally.accepted);
    tally
}

/// An npz whose members are stored uncompressed, so mutations reach the .npy headers and data.
fn stored_npz(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    buf.into_inner()
}

fn npy_bytes(entry: NpzEntry<'_>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npz");
    npz::write_npz(&p, &[("x", entry)]).unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_index(0).unwrap(), &mut out).unwrap();
    out
}

/// Valid npz files to start from: a tiny dataset and, for `metrics`, its samples.
fn npz_bases() -> (Vec<u8>, Vec<u8>) {
    let images = Array3::<f32>::from_shape_fn((2, 8, 8), |(i, y, x)| ((i + y + x) % 7) as f32 / 7.0).into_dyn();
    let masks = Array4::<u8>::from_shape_fn((2, 2, 8, 8), |(_, a, y, x)| ((y + x + a) % 5 == 0) as u8).into_dyn();
    let series = vec!["1.2.3".to_string(), "1.2.4".to_string()];
    let data = stored_npz(&[
        ("images", npy_bytes(NpzEntry::F32(&images))),
        ("masks", npy_bytes(NpzEntry::U8(&masks))),
        ("series_uid", npy_bytes(NpzEntry::Str(&series))),
    ]);
    let samples = stored_npz(&[("samples", npy_bytes(NpzEntry::U8(&masks)))]);
    (data, samples)
}

#[test]
fn npz_datasets_and_metrics_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (data, samples) = npz_bases();
    let good = dir.path().join("good.npz");
    std::fs::write(&good, &data).unwrap();
    Dataset::load(&good).expect("the base dataset is valid");
    let bases = [("npz", data.clone(), 200), ("npz", data, 80)];
    let t = run(dir.path(), "npz", &bases, 1200, &|p| Dataset::load(p).map(|_| ()));
    assert!(t.files >= 1000 && t.errors > t.files / 2, "{t:?}");

    let labels = good.clone();
    let bases = [("npz", samples, 120)];
    let t = run(dir.path(), "metrics", &bases, 1000, &|p| score_files(p, &labels, None).map(|_| ()));
    assert!(t.files >= 1000 && t.errors > t.files / 2, "{t:?}");
}

#[test]
fn dicom_slices() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read(common::shared_data().join("ct/CT_small.dcm")).unwrap();
    let j2k = std::fs::read(common::shared_data().join("ct/693_J2KR.dcm")).unwrap();
    // The header (meta group, transfer syntax, tags before the pixel data) takes most mutations.
    let bases = [("dcm", base.clone(), 1200), ("dcm", base, 400), ("dcm", j2k, 2000)];
    let t = run(dir.path(), "dicom", &bases, 1200, &|p| read_dicom(p).map(|_| ()));
    assert!(t.files >= 1000 && t.errors > t.files / 4, "{t:?}");
}

#[test]
fn nifti_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("base.nii");
    let header = scan::output_header(&Geometry::Plain, 12, 10, 3, 1);
    let vol: Vec<Vec<f32>> = (0..3).map(|z| (0..120).map(|q| -1000.0 + (z * 120 + q) as f32).collect()).collect();
    scan::write_nifti(&src, &header, &[vol], 10, 12).unwrap();
    let base = std::fs::read(&src).unwrap();
    let gz = dir.path().join("base.nii.gz");
    scan::write_nifti(&gz, &header, &[vec![vec![0.5f32; 120]]], 10, 12).unwrap();
    let base_gz = std::fs::read(&gz).unwrap();
    read_scan(&src).expect("the base volume is valid");
    let bases = [("nii", base.clone(), 352), ("nii", base, 352), ("nii.gz", base_gz, 64)];
    let t = run(dir.path(), "nifti", &bases, 1200, &|p| read_scan(p).map(|_| ()));
    assert!(t.files >= 1000 && t.errors > t.files / 4, "{t:?}");
}

#[test]
fn png_and_tiff_images() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::GrayImage::from_fn(24, 20, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]));
    let (png, tif) = (dir.path().join("b.png"), dir.path().join("b.tif"));
    img.save(&png).unwrap();
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(24, 20, |x, y| image::Luma([(x * 2000 + y) as u16])).save(&tif).unwrap();
    let bases = [("png", std::fs::read(&png).unwrap(), 40), ("tif", std::fs::read(&tif).unwrap(), 200)];
    let t = run(dir.path(), "image", &bases, 1200, &|p| read_scan(p).map(|_| ()));
    assert!(t.files >= 1000 && t.errors > t.files / 4, "{t:?}");
}
