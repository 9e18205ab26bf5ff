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
//! Open a pretrained model in one call with [`infer::Pretrained`]:
//!
//! ```no_run
//! let model = densenet_zoo::infer::Pretrained::open("hf:timm/densenet121.tv_in1k")?;
//! let top5 = model.classify(["cat.jpg"], 5)?; // labels and probabilities
//! let embedding = model.embed(["cat.jpg"])?; // (1, 1024)
//! # Ok::<(), densenet_zoo::Error>(())
//! ```
//!
//! What is where:
//! - [`infer`]: [`infer::Pretrained`], the façade (open by name, file or `hf:`; classify, embed,
//!   feature maps, class activation maps, a fine-tuning run), its preprocessing and top-k, and
//!   [`infer::heat_map`] overlays.
//! - [`spec`]: [`VariantSpec`], its [`spec::Architecture`], [`spec::PretrainedCfg`] and
//!   [`spec::Recipe`]; the built-in variants and class-name lists ([`spec::labels`]).
//! - [`DenseNet`] and its parts ([`Stem`], [`Stage`], [`DenseBlock`], [`DenseLayer`],
//!   [`Transition`]), built from the plan [`VariantSpec`]'s architecture gives ([`StagePlan`]);
//!   [`DenseNet::class_activation_maps`] (Grad-CAM and CAM).
//! - [`checkpoint`]: safetensors, `.pth` and hub weights in, torchvision's and the book's names out.
//! - [`data`], [`train`]: data sets and loaders; the [`train::Trainer`], its [`train::Observer`],
//!   and data-parallel training ([`train::distributed`]).
//! - [`ops`]: the kernels the model calls, the forward [`ops::Mode`] and [`ops::FeatureStore`].
//! - [`tabular`] and its [`DenseMlp`]: CSV files, the book's preprocessing, dense connectivity for
//!   fully connected layers, k-fold log-RMSE (the house-price task).
//!
//! Everything a multi-threaded service shares ([`infer::Pretrained`], [`DenseNet`]) is
//! `Send + Sync`, asserted at compile time.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
mod error;
mod image_io;
pub mod infer;
mod model;
pub mod ops;
mod output;
mod plan;
mod registry;
pub mod spec;
pub mod tabular;
#[doc(hidden)]
pub mod tools;
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
