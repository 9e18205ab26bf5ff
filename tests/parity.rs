//! Parity with PyTorch: the same weights give the same logits, batch-norm statistics and
//! gradients as torchvision (and the book's code), to 1e-4 of the largest value.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_close, relative_error, Fixture};
use densenet_zoo::checkpoint::{expected_tensors, is_buffer, model_from_tensors};
use densenet_zoo::ops::Mode;
use densenet_zoo::spec::TransitionPool;
use densenet_zoo::DenseNet;

/// The float32 tolerance: max |ours − torch| ≤ TOL × max |torch|.
const TOL: f64 = 1e-4;
/// Gradients are compared in float64 on both sides, where far less than TOL separates them.
const GRAD_TOL: f64 = 1e-8;
const CASES: [&str; 5] = [
    "tiny_bottleneck",
    "tiny_cifar",
    "tiny_plain",
    "d2l",
    "tiny_maxpool",
];

/// A model whose every tensor is a `Var` in the returned map, as in training.
fn trainable(f: &Fixture) -> (DenseNet, VarMap) {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in f.state() {
            if !name.ends_with("num_batches_tracked") {
                data.insert(name, Var::from_tensor(&t).unwrap());
            }
        }
    }
    let model = DenseNet::new(
        &f.spec,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (model, varmap)
}

#[test]
fn eval_logits_match_pytorch() {
    for case in CASES {
        let f = Fixture::load(case);
        let model = model_from_tensors(&f.spec, f.state(), case, &Device::Cpu).unwrap();
        let logits = model.forward_t(f.get("input"), false).unwrap();
        assert_close(&logits, f.get("eval.logits"), TOL, &format!("{case} eval logits"));
    }
}

#[test]
fn both_evaluation_modes_match_pytorch_and_only_eval_records_a_graph() {
    for case in CASES {
        let f = Fixture::load(case);
        let (model, _varmap) = trainable(&f);
        let input = Var::from_tensor(f.get("input")).unwrap();
        // Eval: running statistics, and a gradient reaches the input (as Grad-CAM needs).
        assert_eq!(model.eval_mode(), Mode::Eval);
        let eval = model.forward_t(input.as_tensor(), false).unwrap();
        assert_close(&eval, f.get("eval.logits"), TOL, &format!("{case} eval mode"));
        let grads = eval.sum_all().unwrap().backward().unwrap();
        let dx = grads.get(input.as_tensor()).expect("eval mode records a graph");
        assert!(dx.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        // Inference: the same values on the fused kernels, and nothing recorded.
        let inference = model.for_inference();
        assert_eq!(inference.eval_mode(), Mode::Inference);
        let logits = inference.forward_t(input.as_tensor(), false).unwrap();
        assert!(!logits.track_op(), "{case}: inference recorded a graph");
        assert_close(
            &logits,
            f.get("eval.logits"),
            TOL,
            &format!("{case} inference mode"),
        );
    }
}

#[test]
fn train_mode_outputs_and_running_statistics_match_pytorch() {
    for case in CASES {
        let f = Fixture::load(case);
        let (model, varmap) = trainable(&f);
        let logits = model.forward_t(f.get("input"), true).unwrap();
        assert_close(
            &logits,
            f.get("train.logits"),
            TOL,
            &format!("{case} train logits"),
        );
        let after = f.with_prefix("after");
        assert!(!after.is_empty());
        let data = varmap.data().lock().unwrap();
        for (name, want) in &after {
            let ours = data[name].as_tensor();
            assert_close(ours, want, TOL, &format!("{case} {name} after one train step"));
            // The statistics really moved: comparing against the initial state would fail.
            assert!(
                relative_error(ours, &f.state()[name]) > 1e-3,
                "{case} {name} did not change"
            );
        }
    }
}

/// A model whose every tensor is a float64 `Var`, for the gradient check against torch's float64.
fn trainable_f64(f: &Fixture) -> (DenseNet, VarMap) {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in f.state() {
            if !name.ends_with("num_batches_tracked") {
                data.insert(name, Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap());
            }
        }
    }
    let model = DenseNet::new(
        &f.spec,
        VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu),
    )
    .unwrap();
    (model, varmap)
}

/// Gradients are checked in float64 against torch's float64 gradients, to GRAD_TOL: in float32,
/// round-off alone moves an ill-conditioned gradient such as `norm0.weight`'s by ~1e-4 in torch itself.
#[test]
fn gradients_of_every_parameter_match_pytorch() {
    for case in ["tiny_bottleneck", "tiny_cifar", "tiny_plain"] {
        let f = Fixture::load(case);
        let (model, varmap) = trainable_f64(&f);
        let input = f.get("input").to_dtype(DType::F64).unwrap();
        let logits = model.forward_t(&input, true).unwrap();
        let labels = f.get("labels").to_dtype(DType::U32).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        assert_close(
            &loss.reshape(1).unwrap(),
            f.get("train.loss64"),
            GRAD_TOL,
            &format!("{case} loss"),
        );
        let grads = loss.backward().unwrap();
        let want = f.with_prefix("grad");
        let largest = want
            .values()
            .map(|g| g.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap())
            .fold(0.0, f64::max);
        let data = varmap.data().lock().unwrap();
        let params: Vec<&String> = data.keys().filter(|k| !is_buffer(k)).collect();
        assert_eq!(
            params.len(),
            want.len(),
            "{case}: parameter count differs from torch"
        );
        for name in params {
            let ours = grads
                .get(data[name].as_tensor())
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
            let theirs = &want[name];
            let scale = theirs
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            if scale < 1e-9 * largest {
                // Zero in exact arithmetic (a conv bias right before a batch norm): torch's
                // value is round-off, so ours must be round-off too.
                let ours_max = ours.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(
                    ours_max < 1e-9 * largest,
                    "{case} grad of {name}: {ours_max:e}, expected ~0"
                );
            } else {
                assert_close(ours, theirs, GRAD_TOL, &format!("{case} grad of {name}"));
            }
        }
    }
}

#[test]
fn max_pooling_transitions_are_not_the_average_ones() {
    // The same weights read as average-pooling transitions do not give torch's logits: the
    // comparison above can fail, and the spec field is what selects the pool.
    let mut f = Fixture::load("tiny_maxpool");
    assert_eq!(f.spec.architecture.transition_pool, TransitionPool::Max);
    f.spec.architecture.transition_pool = TransitionPool::Avg;
    let model = model_from_tensors(&f.spec, f.state(), "tiny_maxpool", &Device::Cpu).unwrap();
    let logits = model.forward_t(f.get("input"), false).unwrap();
    assert!(relative_error(&logits, f.get("eval.logits")) > 100.0 * TOL);
}

#[test]
fn a_misordered_layer_is_caught() {
    // Swapping two same-shaped tensors between layers must break the comparison.
    let f = Fixture::load("tiny_bottleneck");
    let mut state = f.state();
    let a = "features.denseblock2.denselayer1.conv2.weight";
    let b = "features.denseblock2.denselayer2.conv2.weight";
    let (ta, tb) = (state[a].clone(), state[b].clone());
    assert_eq!(ta.dims(), tb.dims());
    state.insert(a.into(), tb);
    state.insert(b.into(), ta);
    let model = model_from_tensors(&f.spec, state, "swapped", &Device::Cpu).unwrap();
    let logits = model.forward_t(f.get("input"), false).unwrap();
    assert!(relative_error(&logits, f.get("eval.logits")) > 100.0 * TOL);
}

#[test]
fn a_misnamed_tensor_is_refused() {
    let f = Fixture::load("tiny_bottleneck");
    let mut state = f.state();
    let t = state.remove("features.norm5.weight").unwrap();
    state.insert("features.norm_5.weight".into(), t);
    let err = model_from_tensors(&f.spec, state, "renamed.safetensors", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("renamed.safetensors"), "{err}");
    assert!(err.contains("missing tensor features.norm5.weight [20]"), "{err}");
    assert!(err.contains("unexpected tensor features.norm_5.weight"), "{err}");
}

#[test]
fn tensor_names_and_shapes_are_torchvisions() {
    let text = std::fs::read_to_string(common::fixtures_dir().join("torchvision_tensors.json")).unwrap();
    let torchvision: HashMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    for (arch, tensors) in torchvision {
        let spec = densenet_zoo::VariantSpec::resolve(&arch).unwrap();
        let ours: Vec<(String, Vec<usize>)> = expected_tensors(&spec)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        let theirs: Vec<(String, Vec<usize>)> = tensors
            .into_iter()
            .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
            .collect();
        assert_eq!(
            ours, theirs,
            "{arch}: names, shapes or order differ from torchvision"
        );
    }
}

#[test]
fn features_only_levels_have_timms_channels_and_strides() {
    let spec = densenet_zoo::VariantSpec::resolve("121").unwrap();
    let model = DenseNet::new(&spec, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
    let info: Vec<(usize, usize)> = model
        .feature_info()
        .iter()
        .map(|i| (i.channels, i.reduction))
        .collect();
    assert_eq!(info, vec![(64, 2), (256, 4), (512, 8), (1024, 16), (1024, 32)]);
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let levels = model.features_only(&x, false).unwrap();
    for (level, (c, r)) in levels.iter().zip(info) {
        assert_eq!(level.dims(), &[1, c, 64 / r, 64 / r]);
    }
}

/// Every built-in variant's fused inference path (batch norm and ReLU applied as the
/// convolution reads, dense blocks in one buffer, the 3×3 weights stacked by tap once) against
/// its unfused evaluation path on the same weights, in f32, at batch 1 and 3, at a size that
/// keeps every block; the generated weights give every batch norm statistics of its own.
#[test]
fn every_variant_infers_on_the_fused_path_as_on_the_plain_one_in_f32() {
    for mut spec in densenet_zoo::VariantSpec::builtin() {
        spec.set_input_size(spec.input_size().min(64));
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap();
            for (name, t) in common::generated_state(&spec) {
                if !name.ends_with("num_batches_tracked") {
                    data.insert(name, Var::from_tensor(&t).unwrap());
                }
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = DenseNet::new(&spec, vb).unwrap();
        let inference = model.for_inference();
        let (c, size) = (spec.architecture.in_channels, spec.input_size());
        for n in [1, 3] {
            let x = Tensor::randn(0f32, 1.0, (n, c, size, size), &Device::Cpu).unwrap();
            let plain = model.forward_t(&x, false).unwrap();
            let fused = inference.forward_t(&x, false).unwrap();
            let what = format!("{} at batch {n}, {size}x{size}", spec.name);
            assert_close(&fused, &plain, 1e-5, &what);
            let spread = plain.max_all().unwrap().to_scalar::<f32>().unwrap()
                - plain.min_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(spread > 1e-3, "{what}: the logits do not differ ({spread})");
        }
    }
}
