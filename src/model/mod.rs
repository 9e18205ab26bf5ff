//! The model, piece by piece as in the paper: stem, dense layer, dense block, transition,
//! and the DenseNet that strings them together.

mod block;
mod cam;
mod densenet;
mod freeze;
mod layer;
mod norm_relu_conv;
mod stem;
mod transition;

pub use block::DenseBlock;
pub use cam::{CamClass, CamMethod, ClassActivationMaps};
pub use densenet::{DenseNet, FeatureInfo, Stage};
pub use layer::DenseLayer;
pub use norm_relu_conv::NormReluConv;
pub use stem::Stem;
pub use transition::Transition;
