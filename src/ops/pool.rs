//! Pooling: the stem's max pool (with a backward candle lacks), the transitions' 2×2
//! average pool, and the global average pool before the classifier.

use candle_core::{Result, Tensor};

use super::cpu::{AvgPool2x2, MaxPool2d};
use super::mode::{KernelPath, Mode};

/// Max pooling with a k×k window, stride and implicit −∞ padding, like PyTorch's
/// `MaxPool2d(k, stride, padding)` (floor mode): (N, C, H, W) → (N, C, H', W') with
/// H' = floor((H + 2·padding − k) / stride) + 1.
///
/// The gradient flows to the first maximum of each window in row-major order, as in PyTorch,
/// so ties (common after a ReLU) give the same gradients as torch.
///
/// On the CPU (f32, f64), one kernel with its own backward. Elsewhere (CUDA), the maximum of the
/// k·k shifted, strided views of the input padded with zeros, built from candle ops that all
/// have gradients; zero padding equals −∞ padding only for non-negative inputs, which the
/// DenseNet stem's pool (after a ReLU) always gets; without padding (a max-pooling transition)
/// any input.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if KernelPath::of(x, Mode::Eval).is_cpu() {
        x.contiguous()?.apply_op1(MaxPool2d {
            kernel,
            stride,
            padding,
        })
    } else {
        max_pool2d_by_views(x, kernel, stride, padding)
    }
}

/// The device-independent max pool of [`max_pool2d`], for non-negative inputs or no padding.
fn max_pool2d_by_views(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let out = |n: usize| (n + 2 * padding).saturating_sub(kernel) / stride + 1;
    let (ho, wo) = (out(h), out(w));
    let padded = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let index = |offset: usize, count: usize| {
        let idx: Vec<u32> = (0..count).map(|i| (i * stride + offset) as u32).collect();
        Tensor::new(idx.as_slice(), x.device())
    };
    let mut result: Option<Tensor> = None;
    for dy in 0..kernel {
        let rows = padded.index_select(&index(dy, ho)?, 2)?;
        for dx in 0..kernel {
            let view = rows.index_select(&index(dx, wo)?, 3)?;
            result = Some(match result {
                None => view,
                Some(r) => r.maximum(&view)?,
            });
        }
    }
    result.ok_or_else(|| candle_core::Error::Msg("max pool with an empty kernel".into()))
}

/// 2×2 average pooling with stride 2 (floor mode): (N, C, H, W) → (N, C, H/2, W/2).
///
/// An odd last row or column is dropped, as in PyTorch. On the CPU, a kernel with its own
/// backward; elsewhere a reshape and a mean. Both give exact gradients for every size.
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    if KernelPath::of(x, Mode::Eval).is_cpu() {
        return x.contiguous()?.apply_op1(AvgPool2x2);
    }
    avg_pool2x2_by_reshape(x)
}

fn avg_pool2x2_by_reshape(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, 2 * ho)?.narrow(3, 0, 2 * wo)?
    } else {
        x.clone()
    };
    x.reshape((n, c, ho, 2, wo, 2))?.mean((3, 5))
}

/// Global average pooling: (N, C, H, W) → (N, C), for any H and W.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The reference: max over explicitly padded shifted views, built from candle ops.
    fn reference_max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
        let x = x.pad_with_same(2, p, p)?.pad_with_same(3, p, p)?;
        let (_, _, h, w) = x.dims4()?;
        let (ho, wo) = ((h - k) / s + 1, (w - k) / s + 1);
        let mut rows = Vec::new();
        for oy in 0..ho {
            let mut cols = Vec::new();
            for ox in 0..wo {
                let win = x.narrow(2, oy * s, k)?.narrow(3, ox * s, k)?;
                cols.push(win.flatten_from(2)?.max_keepdim(2)?);
            }
            rows.push(Tensor::cat(&cols, 2)?);
        }
        Tensor::stack(&rows, 2)
    }

    #[test]
    fn max_pool_matches_a_reference_on_odd_and_even_sizes() -> Result<()> {
        for (h, w) in [(9, 9), (8, 11), (5, 4), (3, 3)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu)?;
            let ours = max_pool2d(&x, 3, 2, 1)?;
            // Replicate padding never changes a window's max, so it stands in for −∞.
            let want = reference_max_pool(&x, 3, 2, 1)?;
            assert_eq!(ours.dims(), want.dims());
            let diff = (ours - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0);
        }
        Ok(())
    }

    #[test]
    fn max_pool_matches_the_reference_for_other_windows_and_propagates_nan() -> Result<()> {
        for (k, s, p) in [(2, 2, 0), (3, 1, 1), (5, 3, 2), (4, 2, 1), (3, 3, 0)] {
            for (h, w) in [(9, 9), (8, 11), (6, 5)] {
                let x = Tensor::randn(0f64, 1.0, (2, 3, h, w), &Device::Cpu)?;
                let ours = max_pool2d(&x, k, s, p)?;
                let want = reference_max_pool(&x, k, s, p)?;
                assert_eq!(ours.dims(), want.dims(), "{k}/{s}/{p} on {h}×{w}");
                let diff = (ours - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert_eq!(diff, 0.0, "{k}/{s}/{p} on {h}×{w}");
            }
        }
        // x[r, c] = 5r + c with x[1, 1] = NaN: torch gives NaN in the four windows that cover
        // (1, 1) and each other window's bottom-right value.
        let mut values: Vec<f32> = (0..25).map(|v| v as f32).collect();
        values[6] = f32::NAN;
        let x = Tensor::from_vec(values, (1, 1, 5, 5), &Device::Cpu)?;
        let got = max_pool2d(&x, 3, 2, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(got[..2].iter().all(|v| v.is_nan()) && got[3..5].iter().all(|v| v.is_nan()));
        assert_eq!(got[2], 9.0);
        assert_eq!(got[5..], [19.0, 21.0, 23.0, 24.0]);
        Ok(())
    }

    #[test]
    fn the_view_based_max_pool_for_other_devices_agrees_on_non_negative_input() -> Result<()> {
        for (h, w) in [(9, 9), (8, 11), (4, 5)] {
            let x = Var::from_tensor(&Tensor::rand(0f64, 1.0, (2, 3, h, w), &Device::Cpu)?)?;
            let a = max_pool2d(x.as_tensor(), 3, 2, 1)?;
            let b = max_pool2d_by_views(x.as_tensor(), 3, 2, 1)?;
            assert_eq!(
                a.flatten_all()?.to_vec1::<f64>()?,
                b.flatten_all()?.to_vec1::<f64>()?
            );
            let r = Tensor::rand(0f64, 1.0, a.dims(), &Device::Cpu)?;
            let ga = (a * &r)?.sum_all()?.backward()?;
            let gb = (b * &r)?.sum_all()?.backward()?;
            let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
            let diff = (ga - gb)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "{diff}");
        }
        Ok(())
    }

    #[test]
    fn max_pool_gradient_goes_to_the_first_maximum() -> Result<()> {
        // A 4×4 plane of ties: every 3×3/2 window with padding 1 has its first max at its
        // top-left real pixel, so only pixels (0,0), (0,1), (1,0), (1,1) of the 2×2 output's
        // windows receive gradient.
        let x = Var::from_tensor(&Tensor::zeros(
            (1, 1, 4, 4),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        let y = max_pool2d(x.as_tensor(), 3, 2, 1)?;
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        let weights = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu)?;
        let grads = (y * weights)?.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut want = vec![0f32; 16];
        want[0] = 1.0; // window (0,0) covers rows 0..2, cols 0..2: first is (0,0)
        want[1] = 2.0; // window (0,1) covers cols 1..4: first is (0,1)
        want[4] = 3.0; // window (1,0) covers rows 1..4: first is (1,0)
        want[5] = 4.0;
        assert_eq!(g, want);
        Ok(())
    }

    #[test]
    fn avg_pool_kernel_matches_the_reshape_on_odd_sizes() -> Result<()> {
        for (h, w) in [(7, 9), (8, 8), (5, 2)] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, h, w), &Device::Cpu)?)?;
            let (a, b) = (
                avg_pool2x2(x.as_tensor())?,
                avg_pool2x2_by_reshape(x.as_tensor())?,
            );
            let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-12);
            let r = Tensor::randn(0f64, 1.0, a.dims(), &Device::Cpu)?;
            let ga = (a * &r)?.sum_all()?.backward()?;
            let gb = (b * &r)?.sum_all()?.backward()?;
            let d = (ga.get(x.as_tensor()).unwrap() - gb.get(x.as_tensor()).unwrap())?
                .abs()?
                .max_all()?;
            assert!(d.to_scalar::<f64>()? < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn avg_pool_drops_the_odd_edge_and_its_gradient() -> Result<()> {
        let x = Var::from_tensor(&Tensor::arange(0f32, 15.0, &Device::Cpu)?.reshape((1, 1, 3, 5))?)?;
        let y = avg_pool2x2(x.as_tensor())?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![3.0, 5.0]);
        let grads = y.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let q = 0.25;
        assert_eq!(g, vec![q, q, q, q, 0., q, q, q, q, 0., 0., 0., 0., 0., 0.]);
        Ok(())
    }
}
