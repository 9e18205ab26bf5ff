//! Memory-efficient training (`DenseNet::with_memory_efficient`, `FeatureStore`) gives the
//! default mode's numbers bit for bit: outputs, running statistics and every gradient, over
//! several optimiser steps. torchvision once shipped a checkpointed DenseNet whose gradients
//! were silently wrong (pytorch/vision#2221); this is the test that would have caught it.

mod common;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{fixtures_dir, splitmix_uniform};
use densenet_zoo::ops::{BatchNorm2d, Conv2d, FeatureStore, Mode};
use densenet_zoo::train::{seeded_varmap, Optimizer, OptimizerKind};
use densenet_zoo::{DenseNet, VariantSpec};

/// Largest |a − b| over two tensors of the same shape.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn uniform(seed: u64, dims: &[usize], dtype: DType) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(splitmix_uniform(seed, n), dims, &Device::Cpu)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Trains two copies of `spec` from the same weights for three SGD steps, one in each mode,
/// and asserts that logits, loss, gradients, running statistics and weights never differ.
fn train_both_modes(spec: &VariantSpec, batch: usize, side: usize) {
    let x = uniform(1, &[batch, spec.architecture.in_channels, side, side], DType::F32);
    let labels: Vec<u32> = (0..batch)
        .map(|i| (i * 3 % spec.architecture.num_classes) as u32)
        .collect();
    let y = Tensor::from_vec(labels, batch, &Device::Cpu).unwrap();
    let copies: Vec<(VarMap, DenseNet, Optimizer)> = [false, true]
        .into_iter()
        .map(|memory_efficient| {
            let varmap = seeded_varmap(spec, 5, &Device::Cpu).unwrap();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let model = DenseNet::new(spec, vb)
                .unwrap()
                .with_memory_efficient(memory_efficient);
            let opt = Optimizer::new(OptimizerKind::Sgd, &varmap, 0.9, true, 1e-4);
            (varmap, model, opt)
        })
        .collect();
    let mut copies = copies;
    for step in 1..=3 {
        let mut results = Vec::new();
        for (varmap, model, opt) in &mut copies {
            let logits = model.forward_t(&x, true).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
            let grads = loss.backward().unwrap();
            let mut named: Vec<(String, Tensor)> = Vec::new();
            let data = varmap.data().lock().unwrap();
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                let var = &data[name];
                // Running statistics after this step's forward pass; gradients of the rest.
                let value = match grads.get(var.as_tensor()) {
                    Some(g) => g.clone(),
                    None => var.as_tensor().copy().unwrap(),
                };
                named.push((name.clone(), value));
            }
            drop(data);
            opt.step(&grads, 0.05).unwrap();
            results.push((logits, loss, named));
        }
        let (plain, efficient) = (&results[0], &results[1]);
        let what = format!("{} step {step}", spec.name);
        assert_eq!(max_diff(&plain.0, &efficient.0), 0.0, "{what}: logits");
        assert_eq!(max_diff(&plain.1, &efficient.1), 0.0, "{what}: loss");
        assert_eq!(plain.2.len(), efficient.2.len());
        for ((name, a), (_, b)) in plain.2.iter().zip(&efficient.2) {
            assert_eq!(
                max_diff(a, b),
                0.0,
                "{what}: {name} (gradient or running statistic)"
            );
        }
    }
    for (name, var) in copies[0].0.data().lock().unwrap().iter() {
        let other = &copies[1].0.data().lock().unwrap()[name];
        assert_eq!(
            max_diff(var.as_tensor(), other.as_tensor()),
            0.0,
            "{}: {name} after three steps",
            spec.name
        );
    }
}

fn fixture_spec(name: &str) -> VariantSpec {
    VariantSpec::resolve(fixtures_dir().join(format!("{name}.json")).to_str().unwrap()).unwrap()
}

#[test]
fn bottleneck_nets_train_identically_in_both_modes() {
    train_both_modes(&fixture_spec("tiny_bottleneck"), 3, 33);
    train_both_modes(&fixture_spec("tiny_cifar"), 4, 15);
}

#[test]
fn plain_nets_with_conv_bias_train_identically_in_both_modes() {
    train_both_modes(&fixture_spec("tiny_plain"), 3, 31);
    train_both_modes(&VariantSpec::resolve("d2l").unwrap(), 2, 40);
}

#[test]
fn densenet121_trains_identically_in_both_modes() {
    // Blocks of 6, 12, 24 and 16 layers, down to 2×2 in block 4.
    let mut spec = VariantSpec::resolve("121").unwrap();
    spec.architecture.num_classes = 10;
    train_both_modes(&spec, 2, 64);
}

/// Reference for one layer's first unit: the concatenation, then norm, ReLU and conv.
fn plain_unit(features: &[Tensor], norm: &BatchNorm2d, conv: &Conv2d) -> Tensor {
    let x = Tensor::cat(features, 1).unwrap();
    conv.forward(&norm.forward_relu(&x, Mode::Train).unwrap())
        .unwrap()
}

#[test]
fn shared_features_match_concatenation_in_f64_forward_and_backward() {
    // A block by hand: input of 3 channels, two layers of k = 2 (3×3 conv with bias, then
    // 1×1 conv), every gradient compared, on an odd 5×7 map.
    let (n, c0, k, h, w) = (3, 3, 2, 5, 7);
    let input = Var::from_tensor(&uniform(9, &[n, c0, h, w], DType::F64)).unwrap();
    let run = |shared: bool| {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let layers: Vec<(BatchNorm2d, Conv2d)> = (0..2)
            .map(|l| {
                let cin = c0 + l * k;
                let kernel = if l == 0 { 3 } else { 1 };
                let vb = vb.pp(format!("layer{l}"));
                let norm = BatchNorm2d::new(vb.pp("norm"), cin).unwrap();
                let conv = Conv2d::new(vb.pp("conv"), cin, k, kernel, 1, kernel / 2, l == 0).unwrap();
                (norm, conv)
            })
            .collect();
        // The same non-trivial parameters in both runs.
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        for (i, name) in names.iter().enumerate() {
            let var = &varmap.data().lock().unwrap()[name];
            let mut v = uniform(100 + i as u64, var.dims(), DType::F64);
            if name.ends_with("running_var") || name.ends_with("norm.weight") {
                v = (v.abs().unwrap() + 0.5).unwrap();
            }
            var.set(&v).unwrap();
        }
        let out = if shared {
            let mut features = FeatureStore::new(input.as_tensor(), c0 + 2 * k, Mode::Train, true).unwrap();
            for (norm, conv) in &layers {
                let new = features.norm_relu_conv(norm, conv).unwrap();
                features.push(&new).unwrap();
            }
            features.finish().unwrap()
        } else {
            let mut features = vec![input.as_tensor().clone()];
            for (norm, conv) in &layers {
                let new = plain_unit(&features, norm, conv);
                features.push(new);
            }
            Tensor::cat(&features, 1).unwrap()
        };
        // A loss that weighs every output channel differently.
        let r = uniform(7, out.dims(), DType::F64);
        let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut values = vec![("output".to_string(), out.clone())];
        values.push((
            "input gradient".to_string(),
            grads.get(input.as_tensor()).unwrap().clone(),
        ));
        for name in &names {
            let var = &varmap.data().lock().unwrap()[name];
            let value = grads
                .get(var.as_tensor())
                .cloned()
                .unwrap_or_else(|| var.as_tensor().copy().unwrap());
            values.push((name.clone(), value));
        }
        values
    };
    let (plain, shared) = (run(false), run(true));
    assert_eq!(plain.len(), 2 + 11);
    for ((name, a), (_, b)) in plain.iter().zip(&shared) {
        let size = a.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(
            size > 0.0,
            "{name} is all zeros: the comparison would prove nothing"
        );
        assert_eq!(max_diff(a, b), 0.0, "{name}");
    }
}

#[test]
fn shared_features_refuse_a_block_that_is_not_filled() {
    let x = uniform(3, &[2, 3, 4, 4], DType::F32);
    let features = FeatureStore::new(&x, 5, Mode::Train, true).unwrap();
    let err = features.finish().unwrap_err().to_string();
    assert!(err.contains("3 of 5 channels pushed"), "{err}");
    assert!(FeatureStore::new(&x, 2, Mode::Train, true).is_err());
}

#[test]
fn the_inference_feature_buffer_refuses_tensors_that_record_a_graph() {
    let plain = uniform(4, &[2, 3, 4, 4], DType::F32);
    let mut features = FeatureStore::new(&plain, 5, Mode::Inference, false).unwrap();
    let tracked = Var::from_tensor(&uniform(5, &[2, 2, 4, 4], DType::F32)).unwrap();
    let err = features.push(&(tracked.as_tensor() * 2.0).unwrap()).unwrap_err();
    assert!(err.to_string().contains("records an autograd graph"), "{err}");
    features.push(&uniform(6, &[2, 2, 4, 4], DType::F32)).unwrap();
    let out = features.finish().unwrap();
    assert_eq!(out.dims(), &[2, 5, 4, 4]);
    assert_eq!(max_diff(&out.narrow(1, 0, 3).unwrap(), &plain), 0.0);
}
