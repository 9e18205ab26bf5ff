//! Checkpoints: safetensors in and out, every naming scheme users have, strict loading that
//! names every problem, and the Hugging Face hub.
//!
//! ```no_run
//! use candle_core::Device;
//! use densenet_zoo::checkpoint::Checkpoint;
//!
//! // A path (safetensors, or a .pth in either of torch.save's formats) or `hf:OWNER/REPO[:FILE]`.
//! let mut ckpt = Checkpoint::open("hf:timm/densenet121.tv_in1k", &Device::Cpu)?;
//! let spec = ckpt.spec(None)?;            // from the metadata, else from the tensor shapes
//! for notice in &ckpt.notices {           // what loading cast, stripped or decided
//!     eprintln!("note: {notice}");
//! }
//! let model = ckpt.into_model(&spec, &Device::Cpu)?;
//! # Ok::<(), densenet_zoo::Error>(())
//! ```

mod adapt;
mod architecture;
mod expected;
mod loaded;
mod metadata;
mod names;
mod source;
mod state_dict;

pub use crate::output::{
    check_file, check_folder, is_temporary, prepare_folder, remove_unfinished_writes, write_atomic,
};
pub use adapt::{adapt, adapt_input_conv};
pub use architecture::{architecture_differences, nearest_builtin, preprocessing_source, spec_from_tensors};
pub(crate) use expected::record_tensors;
pub use expected::{expected_tensors, expected_tensors_with_init, is_buffer, TensorSpec};
pub use loaded::Checkpoint;
pub use metadata::{Metadata, ModelKind, PreprocessRecord, TABULAR_SPEC};
pub use names::{canonical_to_d2l, canonical_to_d2l_current, to_canonical, Canonical, NamingScheme};
pub use source::{hub, kind_of_file, write_safetensors, write_safetensors_with, StateDictKey};
pub use state_dict::{check_tensors, export_state_dict, model_from_tensors, state_dict, varmap_tensors};
