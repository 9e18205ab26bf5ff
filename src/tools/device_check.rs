//! Is a device right? One PyTorch fixture (`tests/fixtures/*.safetensors`, made by
//! `make_fixtures.py`) run on the CPU and on the device: eval logits, training-mode logits, the
//! running statistics after that step, and the gradient of every parameter, each compared
//! between the two devices and against PyTorch. `densenet-zoo check-device` runs it on a GPU
//! machine, where there is no Rust toolchain to run the tests.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::checkpoint::is_buffer;
use crate::error::{Error, Result};
use crate::{DenseNet, VariantSpec};

/// One quantity of one fixture, on the device, against the CPU and against PyTorch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    /// The fixture's name, e.g. `tiny_bottleneck`.
    pub case: String,
    /// What was compared, e.g. `eval logits` or `grad features.conv0.weight`.
    pub quantity: String,
    /// max |device − CPU| / max |CPU|.
    pub vs_cpu: f64,
    /// max |device − PyTorch| / max |PyTorch|.
    pub vs_pytorch: f64,
}

/// Results of one pass of a fixture through the model, as CPU float64 tensors by quantity.
type Outputs = Vec<(String, Tensor)>;

/// Runs fixture `case` (`dir/case.json` and `dir/case.safetensors`) on the CPU and on
/// `device`, in float32, and compares every output.
pub fn check_fixture(dir: &Path, case: &str, device: &Device) -> Result<Vec<Comparison>> {
    let spec = VariantSpec::from_file(&dir.join(format!("{case}.json")))?;
    let path = dir.join(format!("{case}.safetensors"));
    let fixture = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let cpu = run(&spec, &fixture, &Device::Cpu)?;
    let dev = run(&spec, &fixture, device)?;
    // Gradients that are zero in exact arithmetic (a conv bias right before a batch norm) are
    // round-off on every side: those are measured by their size against the largest gradient.
    let largest_grad = fixture
        .iter()
        .filter(|(n, _)| n.starts_with("grad."))
        .map(|(_, g)| max_abs(g))
        .collect::<Result<Vec<f64>>>()?
        .into_iter()
        .fold(0.0, f64::max);
    let mut out = Vec::new();
    for ((quantity, on_cpu), (_, on_device)) in cpu.iter().zip(&dev) {
        let reference = match quantity.as_str() {
            "eval logits" => fixture.get("eval.logits"),
            "train logits" => fixture.get("train.logits"),
            q => q
                .strip_prefix("after ")
                .map(|n| format!("after.{n}"))
                .or_else(|| q.strip_prefix("grad ").map(|n| format!("grad.{n}")))
                .and_then(|n| fixture.get(&n)),
        };
        let Some(reference) = reference else { continue };
        let comparison = if quantity.starts_with("grad ") && max_abs(reference)? < 1e-9 * largest_grad {
            let size = max_abs(on_device)? / largest_grad;
            Comparison {
                case: case.to_string(),
                quantity: format!("{quantity} (zero in exact arithmetic: its size / the largest gradient)"),
                vs_cpu: size,
                vs_pytorch: size,
            }
        } else {
            Comparison {
                case: case.to_string(),
                quantity: quantity.clone(),
                vs_cpu: relative_error(on_device, on_cpu)?,
                vs_pytorch: relative_error(on_device, reference)?,
            }
        };
        out.push(comparison);
    }
    Ok(out)
}

/// Eval logits, then a training-mode forward with its running statistics, its loss on the
/// fixture's labels and the gradients, all on `device`.
fn run(spec: &VariantSpec, fixture: &HashMap<String, Tensor>, device: &Device) -> Result<Outputs> {
    let missing = |name: &str| Error::Checkpoint {
        path: spec.name.clone(),
        message: format!("the fixture has no tensor {name}"),
    };
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, t) in fixture {
            if let Some(name) = name.strip_prefix("state.") {
                if !name.ends_with("num_batches_tracked") {
                    data.insert(name.to_string(), Var::from_tensor(&t.to_device(device)?)?);
                }
            }
        }
    }
    let model = DenseNet::new(spec, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let input = fixture
        .get("input")
        .ok_or_else(|| missing("input"))?
        .to_device(device)?;
    let mut out: Outputs = vec![("eval logits".into(), model.forward_t(&input, false)?)];
    let logits = model.forward_t(&input, true)?;
    out.push(("train logits".into(), logits.clone()));
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in &names {
        if name.contains("running_") {
            out.push((format!("after {name}"), data[*name].as_tensor().clone()));
        }
    }
    if let Some(labels) = fixture.get("labels") {
        let labels = labels.to_dtype(DType::U32)?.to_device(device)?;
        let grads = candle_nn::loss::cross_entropy(&logits, &labels)?.backward()?;
        for name in names.iter().filter(|n| !is_buffer(n)) {
            if let Some(g) = grads.get(data[*name].as_tensor()) {
                out.push((format!("grad {name}"), g.clone()));
            }
        }
    }
    out.into_iter()
        .map(|(q, t)| Ok((q, t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?)))
        .collect()
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?)
}

/// max |a − b| / max |b|, in float64; 0 when equal, infinite when the shapes differ.
fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Ok(f64::INFINITY);
    }
    let b = b.to_dtype(DType::F64)?;
    let diff = max_abs(&(a - &b)?)?;
    let scale = max_abs(&b)?;
    Ok(if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(f64::MIN_POSITIVE)
    })
}
