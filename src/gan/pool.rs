//! The image pool of Shrivastava et al. (used by CycleGAN): discriminators see a history of
//! up to `capacity` generated images, so they do not chase the generator's latest output.

use rand::Rng;

#[derive(Debug, Clone)]
pub struct ImagePool<T> {
    capacity: usize,
    images: Vec<T>,
}

impl<T: Clone> ImagePool<T> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, images: Vec::with_capacity(capacity) }
    }

    /// A pool holding `images` (at most `capacity` of them), as a checkpoint saved it.
    pub fn from_images(capacity: usize, mut images: Vec<T>) -> Self {
        images.truncate(capacity);
        Self { capacity, images }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The stored images, in the order `query` indexes them.
    pub fn images(&self) -> &[T] {
        &self.images
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Until full, stores and returns the new image. Once full, with probability 0.5 returns a
    /// stored image and keeps the new one in its place; otherwise returns the new image.
    pub fn query<R: Rng>(&mut self, image: T, rng: &mut R) -> T {
        if self.capacity == 0 {
            return image;
        }
        if self.images.len() < self.capacity {
            self.images.push(image.clone());
            return image;
        }
        if rng.gen_bool(0.5) {
            let k = rng.gen_range(0..self.images.len());
            std::mem::replace(&mut self.images[k], image)
        } else {
            image
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn returns_old_fakes_half_the_time_once_full() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut pool = ImagePool::new(50);
        for i in 0..50 {
            assert_eq!(pool.query(i, &mut rng), i, "filling returns the new image");
        }
        assert_eq!(pool.len(), 50);
        let trials = 4000;
        let old = (0..trials).filter(|&i| pool.query(1000 + i, &mut rng) != 1000 + i).count();
        let share = old as f64 / trials as f64;
        assert!((share - 0.5).abs() < 0.03, "old share {share}");
        assert_eq!(pool.len(), 50);
        let mut none = ImagePool::new(0);
        assert_eq!(none.query(7, &mut rng), 7);
    }
}
