//! `--device auto|cpu|cuda[:N]`.

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses a device name. `auto` takes the first GPU when this build has CUDA and one is
/// present, else the CPU.
pub fn parse_device(name: &str) -> Result<Device> {
    let bad = |message: String| Error::Device {
        name: name.to_string(),
        message,
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| bad("expected auto, cpu, cuda or cuda:N".into()))?,
                None => return Err(bad("expected auto, cpu, cuda or cuda:N".into())),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(bad(
                    "this build has no CUDA support: rebuild with `--features cuda`".into(),
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| bad(e.to_string()))
        }
    }
}
