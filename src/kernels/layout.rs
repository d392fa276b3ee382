//! Layout changes between NCHW and channels-last. An element-wise strided copy walks the whole
//! destination once per channel and misses the cache on nearly every store: profiled at 16% of
//! a default-model training step. Here the copy goes through 8x8 tiles transposed in AVX
//! registers, so both sides are read and written in whole cache lines.

use std::mem::{ManuallyDrop, MaybeUninit};

use rayon::prelude::*;

/// `len` floats written in parallel, chunk `i` by `fill(i, chunk)`, with no zeroing up front:
/// memset, mostly of buffers the convolutions overwrite anyway, was 5-9% of a step's CPU time.
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
pub unsafe fn par_init(len: usize, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send) -> Vec<f32> {
    let mut buf = uninit(len);
    buf.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    // SAFETY: `fill` initialised every element (the caller's contract).
    unsafe { assume_init(buf) }
}

/// `len` floats, not initialised.
pub fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut buf: Vec<MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { buf.set_len(len) };
    buf
}

/// # Safety
/// Every element of `buf` must have been written.
pub unsafe fn assume_init(buf: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut buf = ManuallyDrop::new(buf);
    // SAFETY: initialised (the caller's contract); MaybeUninit<f32> has f32's layout, and the
    // allocation is handed over whole.
    unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast::<f32>(), buf.len(), buf.capacity()) }
}

/// A pointer into an output buffer that parallel tasks write at disjoint positions which no
/// slice can cover (one NCHW output row spans every channel's plane).
#[derive(Clone, Copy)]
pub struct SharedOut(pub *mut f32);

// SAFETY: the users write disjoint elements only (their contract, stated where they write).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// `k` floats further.
    ///
    /// # Safety
    /// As `pointer::add`: the result must stay inside the buffer.
    pub unsafe fn add(self, k: usize) -> Self {
        // SAFETY: the caller's contract.
        Self(unsafe { self.0.add(k) })
    }
}

/// Zeros `dst`.
pub fn zero(dst: &mut [MaybeUninit<f32>]) {
    dst.fill(MaybeUninit::new(0.0));
}

/// `dst[j * dst_stride + i] = src[i * src_stride + j]` for `i < rows`, `j < cols`.
pub fn transpose(src: &[f32], src_stride: usize, dst: &mut [MaybeUninit<f32>], dst_stride: usize, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!((cols - 1) * dst_stride + rows <= dst.len(), "transpose writes past its destination");
    // SAFETY: the assert bounds every write, and `dst` is borrowed exclusively.
    unsafe { transpose_to(src, src_stride, SharedOut(dst.as_mut_ptr().cast()), dst_stride, rows, cols) }
}

/// [`transpose`] into initialised floats.
pub fn transpose_into(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, rows: usize, cols: usize) {
    // SAFETY: f32 and MaybeUninit<f32> share their layout, and transpose writes only floats.
    let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<MaybeUninit<f32>>(), dst.len()) };
    transpose(src, src_stride, dst, dst_stride, rows, cols);
}

/// [`transpose`] into a raw destination, for tasks that fill disjoint parts of one buffer. The
/// copy goes through 8x8 tiles in AVX registers where the CPU has them, the rest in small blocks
/// that keep the strided side in cache.
///
/// # Safety
/// `dst` must be valid for writes at `j * dst_stride + i` for `i < rows`, `j < cols`, and no
/// other thread may access those elements meanwhile.
pub unsafe fn transpose_to(src: &[f32], src_stride: usize, dst: SharedOut, dst_stride: usize, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!((rows - 1) * src_stride + cols <= src.len(), "transpose reads past its source");
    let (full_r, full_c) = (rows / 8 * 8, cols / 8 * 8);
    let copy = |block: Block| {
        // SAFETY: inside the destination (the caller's contract).
        unsafe { scalar(src, src_stride, dst, dst_stride, block) }
    };
    #[cfg(target_arch = "x86_64")]
    if super::direct::available() {
        for i in (0..full_r).step_by(8) {
            for j in (0..full_c).step_by(8) {
                // SAFETY: the tile lies inside both sides (the assert; the caller's contract).
                unsafe { tile8(src.as_ptr().add(i * src_stride + j), src_stride, dst.0.add(j * dst_stride + i), dst_stride) };
            }
        }
        copy((0..full_r, full_c..cols));
        copy((full_r..rows, 0..cols));
        return;
    }
    copy((0..rows, 0..cols));
}

type Block = (std::ops::Range<usize>, std::ops::Range<usize>);

/// # Safety
/// As [`transpose_to`], for the elements of `block`.
unsafe fn scalar(src: &[f32], src_stride: usize, dst: SharedOut, dst_stride: usize, (rows, cols): Block) {
    // Small blocks keep the strided side in cache.
    for i0 in rows.clone().step_by(8) {
        for j0 in cols.clone().step_by(8) {
            for i in i0..(i0 + 8).min(rows.end) {
                for j in j0..(j0 + 8).min(cols.end) {
                    // SAFETY: the caller's contract.
                    unsafe { *dst.0.add(j * dst_stride + i) = src[i * src_stride + j] };
                }
            }
        }
    }
}

/// An 8x8 block from `src` (rows `ss` apart) transposed into `dst` (rows `ds` apart).
///
/// # Safety
/// The CPU must have AVX2; `src` must hold 8 readable rows of 8 floats and `dst` 8 writable ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(src.add(k * ss)));
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for k in 0..4 {
            _mm256_storeu_ps(dst.add(k * ds), _mm256_permute2f128_ps::<0x20>(s[k], s[k + 4]));
            _mm256_storeu_ps(dst.add((k + 4) * ds), _mm256_permute2f128_ps::<0x31>(s[k], s[k + 4]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_plain_copy_on_odd_shapes_and_strides() {
        for &(rows, cols, extra_s, extra_d) in &[(1, 1, 0, 0), (8, 8, 0, 0), (9, 17, 3, 1), (16, 5, 0, 7), (33, 40, 1, 0), (3, 64, 5, 2)] {
            let (ss, ds) = (cols + extra_s, rows + extra_d);
            let src: Vec<f32> = (0..rows * ss).map(|v| v as f32).collect();
            let mut got = vec![MaybeUninit::new(-1f32); cols * ds];
            transpose(&src, ss, &mut got, ds, rows, cols);
            // SAFETY: initialised above.
            let got: Vec<f32> = got.into_iter().map(|v| unsafe { v.assume_init() }).collect();
            let mut want = vec![-1f32; cols * ds];
            for i in 0..rows {
                for j in 0..cols {
                    want[j * ds + i] = src[i * ss + j];
                }
            }
            assert_eq!(got, want, "{rows}x{cols}");
        }
    }

    #[test]
    fn par_init_hands_out_chunks_in_order() {
        // SAFETY: the closure writes every element.
        let v = unsafe {
            par_init(10, 4, |i, c| {
                zero(c);
                c[0] = MaybeUninit::new(i as f32 + 1.0);
            })
        };
        assert_eq!(v, [1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
    }
}
