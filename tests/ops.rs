//! Our CPU kernels against candle's reference ops, forward and backward, on random shapes
//! including odd sizes, strides and padding.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::assert_close;
use densenet_zoo::checkpoint::varmap_tensors;
use densenet_zoo::ops::{conv2d, norm_relu_conv, BatchNorm2d, Conv2d, Mode};

fn randn(shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::randn(0f64, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
}

#[test]
fn conv2d_matches_candle_forward_and_backward() {
    // (batch, in, out, height, width, kernel, stride, padding)
    let cases = [
        (2, 3, 4, 9, 11, 3, 1, 1),
        (2, 4, 6, 13, 13, 7, 2, 3),
        (3, 5, 7, 8, 8, 1, 1, 0),
        (1, 2, 3, 5, 7, 3, 2, 1),
        (5, 6, 2, 1, 1, 3, 1, 1),
        (1, 8, 4, 4, 6, 1, 1, 0),
        // Stride 1, k×k: the input gradient is a convolution by the flipped weight, padded
        // by k − 1 − p.
        (2, 3, 5, 7, 6, 3, 1, 0),
        (1, 2, 3, 6, 5, 5, 1, 1),
        (2, 4, 3, 8, 9, 5, 1, 2),
        // Stride 1, k×k, fewer channels out than in: the forward pass sums each tap's
        // product with the input, the weight gradient unfolds dy instead of x; grouped images
        // (small maps), one image per GEMM (wide maps), and no padding.
        (9, 6, 3, 5, 4, 3, 1, 1),
        (2, 5, 2, 17, 16, 3, 1, 1),
        (3, 7, 2, 6, 7, 3, 1, 0),
        (2, 6, 4, 9, 8, 5, 1, 1),
        // ... both gradients from one unfolding of dy: one image (a GEMM on both threads, its
        // width padded), and five wide images, three groups on one thread and two on the other.
        (1, 6, 3, 7, 5, 3, 1, 1),
        (5, 5, 2, 17, 16, 3, 1, 1),
        // Maps at least 16 wide: im2col copies runs instead of gathering through a table
        // (strided sizes that candle's reference backward accepts).
        (2, 3, 4, 17, 18, 3, 1, 1),
        (1, 2, 3, 21, 19, 3, 2, 1),
        (3, 2, 2, 17, 21, 7, 2, 3),
    ];
    for (n, cin, cout, h, w, k, s, p) in cases {
        let what = format!("conv {n}x{cin}x{h}x{w} k{k} s{s} p{p}");
        let x = randn(&[n, cin, h, w]);
        let wt = randn(&[cout, cin, k, k]);
        let r = randn(&[n, cout, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1]);
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p).unwrap();
        let reference = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, 1).unwrap();
        assert_close(&ours, &reference, 1e-12, &what);
        let g_ours = (ours * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ref = (reference * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("input", &x), ("weight", &wt)] {
            let a = g_ours.get(v.as_tensor()).unwrap();
            let b = g_ref.get(v.as_tensor()).unwrap();
            assert_close(a, b, 1e-12, &format!("{what}: grad of {name}"));
        }
    }
}

#[test]
fn inference_norm_relu_conv_matches_the_composed_reference() {
    // (batch, channels read, channels of the tensor they are read from, out, height, width,
    // kernel): the conv reads the first channels of a wider tensor, as a dense layer reads a
    // block's buffer; maps under 16 wide gather im2col through a table, wider ones copy runs;
    // batches of small maps go several images to a GEMM.
    let cases = [
        (2, 3, 3, 4, 9, 11, 3),
        (1, 5, 9, 4, 17, 18, 3),
        (5, 6, 10, 3, 7, 7, 3),
        (3, 5, 5, 7, 8, 8, 1),
        (4, 6, 11, 2, 5, 3, 1),
        (1, 4, 6, 3, 20, 16, 1),
        (2, 2, 3, 3, 1, 1, 3),
    ];
    for (n, cin, wide, cout, h, w, k) in cases {
        let what = format!("norm-relu-conv {n}x{cin}(of {wide})x{h}x{w} k{k}");
        let stat = |lo: f64, hi: f64| Tensor::rand(lo, hi, cin, &Device::Cpu).unwrap();
        let tensors = std::collections::HashMap::from([
            ("norm.weight".to_string(), stat(-1.5, 1.5)),
            ("norm.bias".to_string(), stat(-1.0, 1.0)),
            ("norm.running_mean".to_string(), stat(-0.5, 0.5)),
            ("norm.running_var".to_string(), stat(0.2, 2.0)),
            (
                "conv.weight".to_string(),
                randn(&[cout, cin, k, k]).as_tensor().detach(),
            ),
            (
                "conv.bias".to_string(),
                stat(-1.0, 1.0).narrow(0, 0, cout.min(cin)).unwrap(),
            ),
        ]);
        let bias = cout <= cin;
        let buffer = randn(&[n, wide, h, w]).as_tensor().detach();
        let x = buffer.narrow(1, 0, cin).unwrap();
        for dtype in [DType::F64, DType::F32] {
            let vb = VarBuilder::from_tensors(tensors.clone(), dtype, &Device::Cpu);
            let norm = BatchNorm2d::new(vb.pp("norm"), cin).unwrap();
            let conv = Conv2d::new(vb.pp("conv"), cin, cout, k, 1, k / 2, bias).unwrap();
            let x = x.to_dtype(dtype).unwrap();
            let fused = norm_relu_conv(&norm, &conv, &x, Mode::Inference).unwrap();
            // The same arithmetic in two passes, through a normalised copy: equal, bit for bit.
            let normalised = norm
                .forward_relu(&x.contiguous().unwrap(), Mode::Inference)
                .unwrap();
            let two_passes = candle_core::Module::forward(&conv, &normalised).unwrap();
            let (a, b) = (
                fused
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                two_passes
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
            );
            let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ, 0,
                "{what} {dtype:?}: values where fused and two passes differ"
            );
        }
        // And candle's ops, from the formula.
        let t = |name: &str| tensors[name].reshape((1, cin, 1, 1)).unwrap();
        let scale = (t("norm.weight") / (t("norm.running_var") + 1e-5).unwrap().sqrt().unwrap()).unwrap();
        let shift = (t("norm.bias") - t("norm.running_mean").mul(&scale).unwrap()).unwrap();
        let z = x
            .broadcast_mul(&scale)
            .unwrap()
            .broadcast_add(&shift)
            .unwrap()
            .relu()
            .unwrap();
        let mut reference = z.conv2d(&tensors["conv.weight"], k / 2, 1, 1, 1).unwrap();
        if bias {
            let b = tensors["conv.bias"].reshape((1, cout, 1, 1)).unwrap();
            reference = reference.broadcast_add(&b).unwrap();
        }
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F64, &Device::Cpu);
        let norm = BatchNorm2d::new(vb.pp("norm"), cin).unwrap();
        let conv = Conv2d::new(vb.pp("conv"), cin, cout, k, 1, k / 2, bias).unwrap();
        let ours = norm_relu_conv(&norm, &conv, &x, Mode::Inference).unwrap();
        assert_close(&ours, &reference, 1e-12, &what);
    }
}

#[test]
fn fused_batch_norm_relu_matches_the_composed_reference() {
    // The last case's channels sit far from 0, where moments taken about 0 would cancel.
    let cases = [
        ([4, 3, 5, 7], 0.0),
        ([2, 6, 1, 1], 0.0),
        ([1, 2, 3, 3], 0.0),
        ([3, 4, 5, 6], 1e3),
    ];
    for (dims, offset) in cases {
        let values: Vec<Tensor> = (0..4)
            .map(|i| (Tensor::rand(0.5f64, 1.5, dims[1], &Device::Cpu).unwrap() - (i % 2) as f64).unwrap())
            .collect();
        let make = || {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
            let bn = BatchNorm2d::new(vb, dims[1]).unwrap();
            // Non-trivial affine parameters and running statistics.
            let data = varmap.data().lock().unwrap();
            for (i, name) in ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .enumerate()
            {
                let t = if *name == "running_var" {
                    values[i].abs().unwrap()
                } else {
                    values[i].clone()
                };
                data[*name].set(&t).unwrap();
            }
            drop(data);
            (bn, varmap)
        };
        let (fused, fused_map) = make();
        let (reference, ref_map) = make();
        let x = Var::from_tensor(&(randn(&dims).as_tensor() + offset).unwrap()).unwrap();
        let y1 = fused.forward_relu(x.as_tensor(), Mode::Train).unwrap();
        let y2 = reference.forward_t(x.as_tensor(), true).unwrap().relu().unwrap();
        assert_close(&y1, &y2, 1e-12, &format!("{dims:?} output"));
        assert_close(
            fused.running_mean(),
            reference.running_mean(),
            1e-12,
            "running mean",
        );
        assert_close(fused.running_var(), reference.running_var(), 1e-12, "running var");
        let r = randn(&dims);
        let g1 = (y1 * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (y2 * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            1e-10,
            "grad x",
        );
        let (m1, m2) = (fused_map.data().lock().unwrap(), ref_map.data().lock().unwrap());
        for p in ["weight", "bias"] {
            let a = g1.get(m1[p].as_tensor()).unwrap();
            let b = g2.get(m2[p].as_tensor()).unwrap();
            assert_close(a, b, 1e-10, &format!("{dims:?} grad {p}"));
        }
        drop((m1, m2));
        // Eval mode after the update uses the running statistics, fused or not.
        let e1 = fused.forward_relu(x.as_tensor(), Mode::Eval).unwrap();
        let e2 = reference.forward_t(x.as_tensor(), false).unwrap().relu().unwrap();
        assert_close(&e1, &e2, 1e-12, "eval");
        // Without a graph (plain tensors, as loaded for inference), the one-pass eval kernel.
        let plain = VarBuilder::from_tensors(varmap_tensors(&fused_map), DType::F64, &Device::Cpu);
        let inference = BatchNorm2d::new(plain, dims[1]).unwrap();
        let e3 = inference
            .forward_relu(&x.as_detached_tensor(), Mode::Inference)
            .unwrap();
        assert!(!e3.track_op());
        assert_close(&e3, &e2, 1e-12, &format!("{dims:?} eval, one pass"));
        // Read in place from a channel range of a wider tensor, as from a block's buffer.
        let wide = Tensor::cat(&[&x.as_detached_tensor(), &randn(&dims).as_detached_tensor()], 1).unwrap();
        let view = wide.narrow(1, 0, dims[1]).unwrap();
        assert!(!view.is_contiguous() || dims[0] == 1);
        let e4 = inference.forward_relu(&view, Mode::Inference).unwrap();
        assert_close(&e4, &e2, 1e-12, &format!("{dims:?} eval, from a wider tensor"));
    }
}
