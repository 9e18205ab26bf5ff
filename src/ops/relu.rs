//! The ReLU with PyTorch's gradient.

use candle_core::{Result, Tensor};

/// max(0, x), elementwise, any shape; its gradient is 1 where x > 0 and 0 elsewhere, at x = 0
/// included, as PyTorch's `threshold_backward`. candle's `relu` passes the gradient at exactly
/// 0 (its mask is x ≥ 0), which differs from torch wherever a batch norm outputs an exact 0 (a
/// fresh batch norm after a max pool of ReLU outputs gives many).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    // The mask is a comparison, which records no gradient: d(x·mask)/dx = mask.
    x.mul(&x.gt(0.0)?.to_dtype(x.dtype())?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn the_gradient_at_zero_is_zero_as_in_pytorch() -> Result<()> {
        let x = Var::new(&[-1.5f64, 0.0, 2.0], &Device::Cpu)?;
        let y = relu(x.as_tensor())?;
        assert_eq!(y.to_vec1::<f64>()?, [0.0, 0.0, 2.0]);
        let grads = (y * 3.0)?.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).expect("a gradient").to_vec1::<f64>()?;
        // torch.relu(torch.tensor([-1.5, 0., 2.], requires_grad=True)).mul(3).sum().backward()
        assert_eq!(g, [0.0, 0.0, 3.0]);
        Ok(())
    }
}
