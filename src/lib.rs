//! # densenet-zoo
//!
//! DenseNets in Rust on [candle](https://github.com/huggingface/candle): the book's net
//! (Dive into Deep Learning 8.7), torchvision's DenseNet-121/169/201/161, DenseNet-264 and the
//! paper's CIFAR DenseNet-BC nets, all built by one generic constructor from a
//! [`VariantSpec`], with torchvision's tensor names so that torchvision and timm checkpoints
//! load unchanged.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use densenet_zoo::{DenseNet, VariantSpec};
//!
//! let spec = VariantSpec::resolve("d2l")?;
//! let varmap = VarMap::new();
//! let model = DenseNet::new(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
//! let images = Tensor::zeros((2, 1, 96, 96), DType::F32, &Device::Cpu)?;
//! assert_eq!(model.forward_t(&images, false)?.dims(), &[2, 10]);
//! # Ok::<(), densenet_zoo::Error>(())
//! ```
//!
//! What is where:
//! - [`spec`]: [`VariantSpec`], its [`spec::Architecture`], [`spec::PretrainedCfg`] and
//!   [`spec::Recipe`]; the built-in variants.
//! - [`DenseNet`] and its parts ([`Stem`], [`Stage`], [`DenseBlock`], [`DenseLayer`],
//!   [`Transition`]), built from the plan [`VariantSpec`]'s architecture gives ([`StagePlan`]).
//! - [`ops`]: the kernels the model calls, the forward [`ops::Mode`] and [`ops::FeatureStore`].
//! - [`checkpoint`]: safetensors, `.pth` and hub weights in, torchvision's and the book's names out.
//! - [`data`], [`train`]: data sets and loaders; the [`train::Trainer`] and its [`train::Observer`].
//! - [`infer`], [`labels`]: preprocessing, prediction and class names.
//! - [`DenseNet::class_activation_maps`] (Grad-CAM and CAM) and [`heat_map`]: what the net
//!   looked at, and the overlays that show it.
//! - [`tabular`] and its [`DenseMlp`]: CSV files, the book's preprocessing, dense connectivity for
//!   fully connected layers, k-fold log-RMSE (the house-price task).
//! - [`bench`](mod@bench), [`summary`], [`device`], [`device_check`], [`allocator`]: what the command
//!   line's `bench`, `summary`, `--device` and `check-device` run on, and the allocator setting
//!   for training programs.

pub mod allocator;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod device_check;
pub mod distributed;
mod error;
pub mod heat_map;
mod image_io;
pub mod infer;
pub mod labels;
mod model;
pub mod ops;
mod output;
mod plan;
mod registry;
pub mod spec;
pub mod summary;
pub mod tabular;
pub mod train;

pub use error::{Error, FieldError, Result};
pub use model::{
    CamClass, CamMethod, ClassActivationMaps, DenseBlock, DenseLayer, DenseNet, FeatureInfo, Stage, Stem,
    Transition,
};
pub use plan::{StagePlan, TransitionPlan};
pub use registry::Variant;
pub use spec::VariantSpec;
pub use tabular::DenseMlp;

/// The README's examples, run as doc tests (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
