//! Starting weights. burn's default for a convolution is uniform in +-1/sqrt(fan-in) (as
//! PyTorch's); DeepMind's HPU-Net starts every convolution from an orthogonal matrix, which on
//! the LIDC crops decides whether its latents collapse early (docs/small-data.md).

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// How the convolutions' weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WeightInit {
    /// burn's Kaiming-uniform (the same range as PyTorch's default).
    #[default]
    Default,
    /// Each convolution's [out, in * k * k] matrix orthogonal (gain 1) and its bias 0, as
    /// DeepMind's HPU-Net (its biases are within 0.002 of 0); the output's bias keeps its prior.
    Orthogonal,
}

/// `module` with its weights started as `init` says.
pub fn apply<M: Module>(module: M, init: WeightInit) -> M {
    match init {
        WeightInit::Default => module,
        WeightInit::Orthogonal => module.map(&mut Orthogonal::default()),
    }
}

/// The name of the models' last convolution (fcomb's and the stitcher's), whose bias holds
/// the output prior (`fcomb::output_conv`).
const OUTPUT_CONV: &str = "out";

/// Replaces every 4-D parameter (the convolutions' kernels, and only those) by an orthogonal one
/// and zeroes the convolutions' biases, but the output's; norms and linear layers are untouched.
#[derive(Default)]
struct Orthogonal {
    /// (name, container type) of the modules entered, innermost last.
    path: Vec<(String, String)>,
}

impl ModuleMapper for Orthogonal {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // A field is entered under its parent's type: a convolution's bias is ("bias", Conv2d).
        let n = self.path.len();
        let conv_bias = self.path.last().is_some_and(|(name, kind)| name == "bias" && kind == "Struct:Conv2d");
        let output = n >= 2 && self.path[n - 2].0 == OUTPUT_CONV;
        let (id, t, mapper) = param.consume();
        let require = t.is_require_grad();
        let value = match D {
            4 => Initializer::Orthogonal { gain: 1.0 }.init(t.shape(), &t.device()).into_value(),
            1 if conv_bias && !output => t.zeros_like(),
            _ => t,
        };
        Param::from_mapped_value(id, value.set_require_grad(require), mapper)
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;

    use super::*;

    #[test]
    fn orthogonal_kernels_have_orthonormal_rows() {
        let device = Device::default();
        let conv = apply(Conv2dConfig::new([6, 4], [3, 3]).init(&device), WeightInit::Orthogonal);
        // 4 rows of 6 * 9 = 54 columns: W W^T = I.
        let w: Tensor<2> = conv.weight.val().reshape([4, 54]);
        let gram = w.clone().matmul(w.transpose()).into_data().try_to_vec::<f32>().unwrap();
        for (i, g) in gram.iter().enumerate() {
            let want = if i / 4 == i % 4 { 1.0 } else { 0.0 };
            assert!((g - want).abs() < 1e-4, "W W^T [{}, {}] = {g}", i / 4, i % 4);
        }
    }
}
