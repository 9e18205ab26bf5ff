//! Where a checkpoint's bytes come from, and how they become raw tensors: safetensors, and
//! PyTorch's two `torch.save` formats, told apart by their bytes and read with every length
//! checked; the formats that are not checkpoints, named; the Hugging Face hub. What the
//! tensors mean (names, architecture, metadata) is the parent module's.

mod file;
mod foreign;
pub mod hub;
mod pth;
mod pth_guard;

pub use file::{kind_of_file, write_safetensors, write_safetensors_with};
pub(super) use file::{parse_safetensors, read, RawCheckpoint};
pub use pth::StateDictKey;
