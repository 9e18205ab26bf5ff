//! New models with reproducible weights: candle cannot seed its CPU generator, so the
//! initialisation each tensor asks for is drawn here from a seeded one.

use candle_core::{Device, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::{Init, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::checkpoint::{expected_tensors_with_init, TensorSpec};
use crate::error::Result;
use crate::spec::VariantSpec;

/// A `VarMap` holding every tensor of `spec`, initialised as torchvision does, from `seed`.
pub fn seeded_varmap(spec: &VariantSpec, seed: u64, device: &Device) -> Result<VarMap> {
    varmap_from(expected_tensors_with_init(spec)?, seed, device)
}

/// A `VarMap` holding `tensors`, each drawn from its initialisation with a generator seeded
/// with `seed`, in order.
pub(crate) fn varmap_from(tensors: Vec<(TensorSpec, Init)>, seed: u64, device: &Device) -> Result<VarMap> {
    let mut rng = StdRng::seed_from_u64(seed);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (t, init) in tensors {
            let n: usize = t.shape.iter().product();
            let values: Vec<f32> = sample(init, &t.shape, n, &mut rng);
            let tensor = Tensor::from_vec(values, t.shape.as_slice(), device)?;
            data.insert(t.name, Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}

fn sample(init: Init, shape: &[usize], n: usize, rng: &mut StdRng) -> Vec<f32> {
    let uniform = |lo: f64, up: f64, rng: &mut StdRng| {
        let d = Uniform::new(lo as f32, up as f32).expect("lo < up");
        (0..n).map(|_| d.sample(rng)).collect()
    };
    let normal = |mean: f64, std: f64, rng: &mut StdRng| {
        let d = Normal::new(mean as f32, std as f32).expect("finite std");
        (0..n).map(|_| d.sample(rng)).collect()
    };
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => uniform(lo, up, rng),
        Init::Randn { mean, stdev } => normal(mean, stdev, rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(&candle_core::Shape::from(shape)).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(0.0, std, rng),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound, rng)
                }
            }
        }
    }
}
