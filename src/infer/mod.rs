//! Using a trained DenseNet: open it in one call ([`Pretrained::open`]: a variant's published
//! weights, a checkpoint file or `hf:` repo, with its preprocessing and class names), then
//! classify images into top-k labels, embed them, take `features_only` maps or class
//! activation maps, draw those maps over the images ([`heat_map`]), or start a fine-tuning run
//! from the weights ([`Pretrained::fine_tune`]).
//!
//! The steps beneath the façade are public too, for pipelines that hold their own batches:
//! [`Pretrained::prepare`] and [`Pretrained::batch`] (or [`preprocess_image`] and [`batch`]
//! with a [`Transform`](crate::data::Transform)), [`probabilities`] and [`top_k_of`].

pub mod heat_map;
mod load;
mod predict;
mod preprocess;
mod pretrained;

pub use crate::data::eval_transform;
/// The decoded image [`Pretrained`] also takes, re-exported: no `image` dependency needed.
pub use image::DynamicImage;
pub use load::{DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_NAME};
pub use predict::{probabilities, top_k, top_k_of, Prediction};
pub use preprocess::{batch, open_image, preprocess_bytes, preprocess_file, preprocess_image};
pub use pretrained::{Batches, ImageInput, OpenOptions, Pretrained, Progress, Source, DEFAULT_BATCH_SIZE};
