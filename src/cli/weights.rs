//! The flags that choose what to read from a checkpoint, shared by every command that takes
//! `--weights`.

use std::path::PathBuf;

use candle_core::Device;
use densenet_zoo::checkpoint::StateDictKey;
use densenet_zoo::infer::{OpenOptions, Source};

/// Which state dict of a training checkpoint to read.
#[derive(Debug, Clone, clap::Args)]
pub struct StateDictArgs {
    /// Read the EMA copy of the weights from a training checkpoint: `state_dict_ema`, else
    /// `model_ema`, as timm's load_checkpoint(use_ema=True); refused when the file has neither.
    #[arg(long, conflicts_with = "weights_key")]
    pub use_ema: bool,
    /// Read the state dict under KEY of a training checkpoint (`a.b`: `b` inside `a`)
    /// [default: the model's own: state_dict, model_state_dict, model, ...].
    #[arg(long, value_name = "KEY")]
    pub weights_key: Option<String>,
}

impl StateDictArgs {
    /// The library's choice for these flags.
    pub fn key(&self) -> StateDictKey {
        match (&self.weights_key, self.use_ema) {
            (Some(key), _) => StateDictKey::Key(key.clone()),
            (None, true) => StateDictKey::Ema,
            (None, false) => StateDictKey::Model,
        }
    }
}

/// What `infer` and `features` read from a checkpoint, and how they name its outputs.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// Class names, one per line (or JSON), for a checkpoint that records none [default: the
    /// checkpoint's]; their count must be the classifier's.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub state_dict: StateDictArgs,
}

impl ReadArgs {
    /// The library's options for these flags, `--variant` and the device.
    pub fn options(&self, variant: Option<&str>, device: &Device) -> OpenOptions {
        OpenOptions {
            variant: variant.map(str::to_string),
            state_dict: self.state_dict.key(),
            labels: self.labels.clone(),
            device: device.clone(),
        }
    }
}

/// What `--weights` and `--variant` ask for: a checkpoint (with `--variant` saying which net
/// it holds), else the variant's published weights, else the embedded default.
pub fn source(weights: Option<&str>, variant: Option<&str>) -> Source {
    match (weights, variant) {
        (Some(w), _) => Source::Checkpoint(w.to_string()),
        (None, Some(v)) => Source::Variant(v.to_string()),
        (None, None) => Source::Embedded,
    }
}
