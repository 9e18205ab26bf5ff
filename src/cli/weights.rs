//! The flags that choose what to read from a checkpoint, shared by every command that takes
//! `--weights`.

use densenet_zoo::checkpoint::StateDictKey;

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
