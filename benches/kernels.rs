//! Criterion benches of the CPU kernels in `src/ops`, forward and backward, at shapes from the
//! book's net at 32×32 (batch 256) and DenseNet-121 at 224 (batch 16).
//!
//! `cargo bench --bench kernels`

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use densenet_zoo::ops::{avg_pool2x2, conv2d, max_pool2d, BatchNorm2d, Mode};

/// The backward pass of a scalar made from `y`: every gradient the op produces.
fn backward(y: candle_core::Result<Tensor>) {
    y.unwrap().sum_all().unwrap().backward().unwrap();
}

fn var(shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
}

fn convs(c: &mut Criterion) {
    // (name, batch, in, out, side, kernel, stride, padding)
    let cases = [
        ("book 3x3 block1 b256", 256, 128, 32, 8, 3, 1, 1),
        ("121 1x1 block1 b16", 16, 256, 128, 56, 1, 1, 0),
        ("121 3x3 block1 b16", 16, 128, 32, 56, 3, 1, 1),
        ("121 stem 7x7 b16", 16, 3, 64, 224, 7, 2, 3),
    ];
    for (name, n, cin, cout, side, k, s, p) in cases {
        let x = var(&[n, cin, side, side]);
        let w = var(&[cout, cin, k, k]);
        c.bench_function(&format!("conv forward {name}"), |b| {
            b.iter(|| conv2d(x.as_tensor(), w.as_tensor(), s, p).unwrap())
        });
        c.bench_function(&format!("conv forward+backward {name}"), |b| {
            b.iter(|| backward(conv2d(x.as_tensor(), w.as_tensor(), s, p)))
        });
    }
}

fn norms_and_pools(c: &mut Criterion) {
    let varmap = VarMap::new();
    let bn = BatchNorm2d::new(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), 256).unwrap();
    let x = var(&[16, 256, 56, 56]);
    c.bench_function("bn+relu train forward+backward 16x256x56x56", |b| {
        b.iter(|| backward(bn.forward_relu(x.as_tensor(), Mode::Train)))
    });
    c.bench_function("bn+relu eval 16x256x56x56", |b| {
        b.iter(|| bn.forward_relu(x.as_tensor(), Mode::Eval).unwrap())
    });
    let stem = var(&[16, 64, 112, 112]);
    c.bench_function("max pool 3x3/2 forward+backward 16x64x112x112", |b| {
        b.iter(|| backward(max_pool2d(stem.as_tensor(), 3, 2, 1)))
    });
    c.bench_function("avg pool 2x2 forward+backward 16x256x56x56", |b| {
        b.iter(|| backward(avg_pool2x2(x.as_tensor())))
    });
}

criterion_group! {
    name = kernels;
    config = Criterion::default().sample_size(10);
    targets = convs, norms_and_pools
}
criterion_main!(kernels);
