//! An exponential moving average of the weights (Polyak averaging): after every step,
//! `ema = d * ema + (1 - d) * weights`, with `d` ramped up over the first steps as
//! TensorFlow's ExponentialMovingAverage does (`min(d, (1 + n) / (10 + n))`), so that early
//! averages are not dominated by the random initial weights. The average is what validation,
//! figures, sampling and the saved "best" and "last" models use.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::Segmenter;

/// The averaged model, on the inner (non-autodiff) device, and how many steps it has seen.
pub struct Ema {
    pub model: Segmenter,
    pub decay: f64,
    pub updates: u64,
}

impl Ema {
    /// The decay used for the `n`-th update (0-based).
    pub fn decay_at(decay: f64, n: u64) -> f64 {
        decay.min((1.0 + n as f64) / (10.0 + n as f64))
    }

    /// Folds the trained `model`'s weights into the average.
    pub fn update(&mut self, model: &Segmenter) {
        let d = Self::decay_at(self.decay, self.updates) as f32;
        let mut weights = Collect(Vec::new());
        model.valid().visit(&mut weights);
        // A clone shares the tensors; the map builds the new average from them.
        self.model = self.model.clone().map(&mut Blend { weights: weights.0.into_iter(), decay: d });
        self.updates += 1;
    }
}

/// Every float parameter, flattened, in visiting order.
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param.val();
        let n = v.shape().num_elements();
        self.0.push(v.reshape([n]));
    }
}

/// `d * average + (1 - d) * weight` for every parameter, in the same visiting order.
struct Blend {
    weights: std::vec::IntoIter<Tensor<1>>,
    decay: f32,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, avg, mapper) = param.consume();
        let Some(w) = self.weights.next() else { return Param::from_mapped_value(id, avg, mapper) };
        let w: Tensor<D> = w.reshape(avg.shape());
        Param::from_mapped_value(id, avg.mul_scalar(self.decay).add(w.mul_scalar(1.0 - self.decay)), mapper)
    }
}
