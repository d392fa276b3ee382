//! Augmentation of training examples, image and every expert mask alike: the 8 symmetries of
//! the square (here), nnU-Net's spatial ([`spatial`]) and intensity ([`color`]) transforms,
//! and lesion copy-paste ([`paste`]).

pub mod color;
pub mod paste;
pub mod spatial;

use rand::Rng;

/// How training examples are varied; each part is a `[train]` key and a flag of `train`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Augmentation {
    /// One of the 8 symmetries of the square per example.
    pub symmetry: bool,
    /// Rotation by any angle, scaling and elastic deformation ([`spatial`]).
    pub spatial: bool,
    /// Noise, blur, brightness, contrast, low resolution and gamma ([`color`]).
    pub intensity: bool,
    /// Probability that an example receives a lesion from one of `donors` ([`paste`]).
    pub copy_paste: f64,
    /// The examples lesions are cut from: real training crops that an expert marked.
    pub donors: Vec<usize>,
}

impl Augmentation {
    /// The symmetries alone, or nothing.
    pub fn symmetries(on: bool) -> Self {
        Self { symmetry: on, ..Self::default() }
    }
}

/// One of the dihedral symmetries: `rot` quarter turns, then an optional horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Symmetry {
    pub rot: u8,
    pub flip: bool,
}

impl Symmetry {
    /// A random symmetry; non-square crops only get flips and half turns, which keep H x W.
    pub fn random<R: Rng>(rng: &mut R, square: bool) -> Self {
        let rot = if square { rng.gen_range(0..4) } else { 2 * rng.gen_range(0..2) };
        Self { rot, flip: rng.gen_bool(0.5) }
    }

    /// Writes the transformed `src` (h x w, row-major) into `dst`.
    pub fn apply<T: Copy>(&self, src: &[T], h: usize, w: usize, dst: &mut [T]) {
        debug_assert_eq!(src.len(), h * w);
        let (oh, ow) = if self.rot % 2 == 1 { (w, h) } else { (h, w) };
        for oy in 0..oh {
            for ox in 0..ow {
                let x = if self.flip { ow - 1 - ox } else { ox };
                // Inverse rotation: which source pixel lands at (oy, x).
                let (sy, sx) = match self.rot % 4 {
                    0 => (oy, x),
                    1 => (x, w - 1 - oy),
                    2 => (h - 1 - oy, w - 1 - x),
                    _ => (h - 1 - x, oy),
                };
                dst[oy * ow + ox] = src[sy * w + sx];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_quarter_turns_are_identity_and_flip_is_involution() {
        let src: Vec<u32> = (0..12).collect();
        let (h, w) = (3, 4);
        let mut cur = src.clone();
        let (mut ch, mut cw) = (h, w);
        for _ in 0..4 {
            let mut out = vec![0; 12];
            Symmetry { rot: 1, flip: false }.apply(&cur, ch, cw, &mut out);
            cur = out;
            std::mem::swap(&mut ch, &mut cw);
        }
        assert_eq!(cur, src);
        let mut once = vec![0; 12];
        let mut twice = vec![0; 12];
        let f = Symmetry { rot: 0, flip: true };
        f.apply(&src, h, w, &mut once);
        assert_ne!(once, src);
        f.apply(&once, h, w, &mut twice);
        assert_eq!(twice, src);
    }

    #[test]
    fn quarter_turn_moves_corner() {
        // 2x2: [a b; c d] rotated a quarter turn counter-clockwise is [b d; a c].
        let src = ['a', 'b', 'c', 'd'];
        let mut out = ['?'; 4];
        Symmetry { rot: 1, flip: false }.apply(&src, 2, 2, &mut out);
        assert_eq!(out, ['b', 'd', 'a', 'c']);
    }
}
