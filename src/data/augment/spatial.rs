//! Spatial augmentation the way nnU-Net draws it for 2D data: a rotation by any angle, a
//! scaling and an elastic deformation, each with its own probability. One coordinate map per
//! example is applied to the image (bilinear) and to every mask (bilinear, then thresholded at
//! one half) alike, so image and experts never part.

use rand::Rng;

use super::color::blur;

/// Probability of a rotation, drawn uniformly over the whole circle (nnU-Net: 0.2).
pub const P_ROTATE: f64 = 0.2;
/// Probability of a scaling (nnU-Net: 0.2), by a factor in [`SCALE`].
pub const P_SCALE: f64 = 0.2;
/// The sampled region's size relative to the patch: above 1 zooms out (nnU-Net's range).
pub const SCALE: (f32, f32) = (0.7, 1.4);
/// Probability of an elastic deformation (nnU-Net v1's 2D setting).
pub const P_ELASTIC: f64 = 0.2;
/// The displacement field is uniform noise in [-1, 1] smoothed by a Gaussian of sigma in
/// [`ELASTIC_SIGMA`] and multiplied by alpha in [`ELASTIC_ALPHA`] (batchgenerators' recipe:
/// a few pixels of smooth displacement).
pub const ELASTIC_ALPHA: (f32, f32) = (0.0, 200.0);
pub const ELASTIC_SIGMA: (f32, f32) = (9.0, 13.0);

/// For each pixel of an output patch, the source coordinates (row, column) in the crop.
#[derive(Debug, Clone, PartialEq)]
pub struct Warp {
    pub height: usize,
    pub width: usize,
    src_y: Vec<f32>,
    src_x: Vec<f32>,
}

impl Warp {
    /// A patch of `height` x `width` centred at `center` (crop coordinates, may be fractional),
    /// rotated, scaled and deformed as drawn; `None` when no transform was drawn, so that the
    /// caller cuts the patch as it would without spatial augmentation.
    pub fn draw<R: Rng>(rng: &mut R, center: (f32, f32), height: usize, width: usize) -> Option<Warp> {
        let angle = rng.gen_bool(P_ROTATE).then(|| rng.gen_range(-std::f32::consts::PI..std::f32::consts::PI));
        let scale = rng.gen_bool(P_SCALE).then(|| rng.gen_range(SCALE.0..SCALE.1));
        let elastic = rng
            .gen_bool(P_ELASTIC)
            .then(|| (rng.gen_range(ELASTIC_ALPHA.0..ELASTIC_ALPHA.1), rng.gen_range(ELASTIC_SIGMA.0..ELASTIC_SIGMA.1)));
        if angle.is_none() && scale.is_none() && elastic.is_none() {
            return None;
        }
        let (sin, cos) = angle.unwrap_or(0.0).sin_cos();
        let s = scale.unwrap_or(1.0);
        let n = height * width;
        let (dy, dx) = match elastic {
            Some((alpha, sigma)) => (displacement(rng, height, width, alpha, sigma), displacement(rng, height, width, alpha, sigma)),
            None => (vec![0.0; n], vec![0.0; n]),
        };
        let (my, mx) = ((height as f32 - 1.0) / 2.0, (width as f32 - 1.0) / 2.0);
        let (mut src_y, mut src_x) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for y in 0..height {
            for x in 0..width {
                let (oy, ox) = ((y as f32 - my) * s, (x as f32 - mx) * s);
                let i = y * width + x;
                src_y.push(center.0 + cos * oy - sin * ox + dy[i]);
                src_x.push(center.1 + sin * oy + cos * ox + dx[i]);
            }
        }
        Some(Warp { height, width, src_y, src_x })
    }

    /// The crop `src` (h x w) sampled bilinearly at the map, mirrored at the crop's border.
    pub fn sample(&self, src: &[f32], h: usize, w: usize, dst: &mut [f32]) {
        debug_assert_eq!(src.len(), h * w);
        for (i, d) in dst.iter_mut().enumerate().take(self.height * self.width) {
            *d = bilinear(src, h, w, self.src_y[i], self.src_x[i]);
        }
    }

    /// A 0/1 mask sampled as [`Warp::sample`] does, then thresholded at one half.
    pub fn sample_mask(&self, src: &[f32], h: usize, w: usize, dst: &mut [f32]) {
        self.sample(src, h, w, dst);
        for v in dst.iter_mut() {
            *v = if *v >= 0.5 { 1.0 } else { 0.0 };
        }
    }
}

/// A smooth random displacement field in pixels.
fn displacement<R: Rng>(rng: &mut R, h: usize, w: usize, alpha: f32, sigma: f32) -> Vec<f32> {
    let mut field: Vec<f32> = (0..h * w).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    blur(&mut field, h, w, sigma);
    field.iter_mut().for_each(|v| *v *= alpha);
    field
}

/// Mirrors an index into [0, n) (half-sample symmetric, as scipy's "reflect").
fn mirror(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * n;
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - 1 - m }) as usize
}

fn bilinear(src: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let at = |yy: isize, xx: isize| src[mirror(yy, h) * w + mirror(xx, w)];
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn mirror_folds_back_into_range() {
        let got: Vec<usize> = (-3..7).map(|i| mirror(i, 4)).collect();
        assert_eq!(got, vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
    }

    #[test]
    fn a_half_turn_about_the_centre_reverses_the_crop() {
        let (h, w) = (5, 5);
        let src: Vec<f32> = (0..25).map(|v| v as f32).collect();
        let n = h * w;
        let (mut src_y, mut src_x) = (Vec::new(), Vec::new());
        // The map a rotation by pi builds, written out.
        for y in 0..h {
            for x in 0..w {
                src_y.push(4.0 - y as f32);
                src_x.push(4.0 - x as f32);
            }
        }
        let warp = Warp { height: h, width: w, src_y, src_x };
        let mut out = vec![0.0; n];
        warp.sample(&src, h, w, &mut out);
        let reversed: Vec<f32> = src.iter().rev().copied().collect();
        assert_eq!(out, reversed);
    }

    #[test]
    fn drawn_maps_keep_a_disc_round_and_its_area() {
        // A disc of radius 8 at the centre: any rotation keeps it; scaling changes its area by
        // 1/s^2 at most; the elastic field moves it by a few pixels only.
        let (h, w) = (48, 48);
        let disc: Vec<f32> =
            (0..h * w).map(|i| if ((i / w) as f32 - 23.5).hypot((i % w) as f32 - 23.5) <= 8.0 { 1.0 } else { 0.0 }).collect();
        let area: f32 = disc.iter().sum();
        let mut rng = StdRng::seed_from_u64(3);
        let mut drawn = 0;
        for _ in 0..200 {
            let Some(warp) = Warp::draw(&mut rng, (23.5, 23.5), h, w) else { continue };
            drawn += 1;
            let mut out = vec![0.0; h * w];
            warp.sample_mask(&disc, h, w, &mut out);
            let got: f32 = out.iter().sum();
            let (lo, hi) = (area / (SCALE.1 * SCALE.1) * 0.8, area / (SCALE.0 * SCALE.0) * 1.2);
            assert!(got >= lo && got <= hi, "area {got} outside [{lo}, {hi}]");
            assert!(out.iter().all(|v| *v == 0.0 || *v == 1.0));
        }
        // 1 - 0.8^3 of draws transform: about 98 of 200.
        assert!((70..130).contains(&drawn), "{drawn} of 200 draws transformed");
    }
}
