//! [`Pretrained`]: a DenseNet with what came with its weights (preprocessing, class names),
//! opened in one call and used for the common jobs: classify, embed, feature maps, class
//! activation maps, and a fine-tuning run.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::DynamicImage;

use super::load::load_with;
use super::load::DEFAULT_WEIGHTS_NAME;
use super::predict::{top_k, Prediction};
use super::preprocess::{batch, preprocess_bytes, preprocess_file, preprocess_image};
use crate::checkpoint::StateDictKey;
use crate::data::{eval_transform, Transform};
use crate::error::{Error, Result};
use crate::model::{CamClass, CamMethod, ClassActivationMaps, DenseNet, FeatureInfo};
use crate::spec::VariantSpec;
use crate::train::{Start, TrainConfig};

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The crate's embedded default: the book's net trained on Fashion-MNIST at 32×32.
    Embedded,
    /// A variant's published weights (its `pretrained_cfg.hf_hub_id`), by built-in name or
    /// alias (`121`, `densenet121`) or JSON spec file; `d2l` is the embedded default.
    Variant(String),
    /// A checkpoint: a file (safetensors, `.pth`, `.pt`, `.bin`) or `hf:OWNER/REPO[:FILE]`.
    Checkpoint(String),
}

impl Source {
    /// Reads a name as a user means it: `hf:...` is a hub checkpoint; a built-in variant
    /// name or alias (`121`, `densenet169`, `d2l`) or a `.json` spec file is that variant's
    /// published weights; anything else is a checkpoint file (write `./121` for a file of
    /// that name).
    pub fn parse(name: &str) -> Self {
        let wanted = name.to_ascii_lowercase();
        let builtin = VariantSpec::builtin()
            .iter()
            .any(|s| s.name == wanted || s.aliases.contains(&wanted));
        if name.starts_with("hf:") || !(builtin || wanted.ends_with(".json")) {
            Self::Checkpoint(name.to_string())
        } else {
            Self::Variant(name.to_string())
        }
    }
}

impl From<&str> for Source {
    fn from(name: &str) -> Self {
        Self::parse(name)
    }
}

/// How [`Pretrained::open_with`] reads a model, beyond where its weights are.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The net a checkpoint holds, by name or spec file, when its tensors and metadata do
    /// not say it (a `.pth` of DenseNet-264, a CIFAR net); checked against the tensors.
    pub variant: Option<String>,
    /// Which state dict of a training checkpoint to read (its EMA copy, another key).
    pub state_dict: StateDictKey,
    /// A file of class names, one per line, replacing the checkpoint's own: its count must be
    /// the classifier's.
    pub labels: Option<PathBuf>,
    /// Where the model runs.
    pub device: Device,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            variant: None,
            state_dict: StateDictKey::default(),
            labels: None,
            device: Device::Cpu,
        }
    }
}

/// One image to run, in any form a caller holds it.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// An image file (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM).
    File(&'a Path),
    /// An encoded image file's bytes.
    Encoded(&'a [u8]),
    /// A decoded image.
    Image(&'a DynamicImage),
}

impl<'a> From<&'a Path> for ImageInput<'a> {
    fn from(path: &'a Path) -> Self {
        Self::File(path)
    }
}

impl<'a> From<&'a PathBuf> for ImageInput<'a> {
    fn from(path: &'a PathBuf) -> Self {
        Self::File(path)
    }
}

impl<'a> From<&'a str> for ImageInput<'a> {
    /// A path to an image file.
    fn from(path: &'a str) -> Self {
        Self::File(Path::new(path))
    }
}

impl<'a> From<&'a String> for ImageInput<'a> {
    /// A path to an image file.
    fn from(path: &'a String) -> Self {
        Self::File(Path::new(path))
    }
}

impl<'a> From<&'a [u8]> for ImageInput<'a> {
    /// An encoded image file's bytes.
    fn from(bytes: &'a [u8]) -> Self {
        Self::Encoded(bytes)
    }
}

impl<'a> From<&'a Vec<u8>> for ImageInput<'a> {
    /// An encoded image file's bytes.
    fn from(bytes: &'a Vec<u8>) -> Self {
        Self::Encoded(bytes)
    }
}

impl<'a> From<&'a DynamicImage> for ImageInput<'a> {
    fn from(image: &'a DynamicImage) -> Self {
        Self::Image(image)
    }
}

/// How far a batched call has got, given after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Images run so far.
    pub done: usize,
    /// Images in the call.
    pub total: usize,
}

/// Images per forward pass unless [`Pretrained::batches`] says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 16;

/// A DenseNet ready for inference, with its preprocessing and class names: timm's
/// `create_model(name, pretrained=True)` with its `pretrained_cfg`.
///
/// ```no_run
/// use densenet_zoo::infer::Pretrained;
///
/// let model = Pretrained::open("hf:timm/densenet121.tv_in1k")?;
/// for (file, top) in ["cat.jpg", "dog.png"].iter().zip(model.classify(["cat.jpg", "dog.png"], 5)?) {
///     println!("{file}: {} {:.3}", top[0].label, top[0].prob);
/// }
/// let embeddings = model.embed(["cat.jpg", "dog.png"])?; // (2, 1024)
/// # Ok::<(), densenet_zoo::Error>(())
/// ```
///
/// `Pretrained` is `Send + Sync`: one model serves any number of threads, each call with its
/// own batches. Its weights are plain tensors, so no autograd graph is recorded. Images are
/// taken by reference (`&path`, `&bytes`, `&image`). An image's results can differ in the last
/// bits between batch sizes (the GEMMs group images differently: logits by about 1e-5), never
/// between threads or runs.
#[derive(Debug)]
pub struct Pretrained {
    net: DenseNet,
    classes: Vec<String>,
    transform: Transform,
    origin: String,
    notices: Vec<String>,
    options: OpenOptions,
}

const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Pretrained>();
    shared_between_threads::<DenseNet>();
};

impl Pretrained {
    /// Opens `name` on the CPU: a built-in variant's published weights (`121`, `densenet169`),
    /// a checkpoint file, or `hf:OWNER/REPO[:FILE]` ([`Source::parse`]). With the crate's
    /// `hub` feature off, `hf:` reads only the local Hugging Face cache.
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] for a bare name that is neither a variant nor a file
    /// (`densenet12`); [`Error::Checkpoint`] (unreadable, or not a DenseNet, every strict-load
    /// problem listed); [`Error::Io`] for a checkpoint file that cannot be opened.
    pub fn open(name: &str) -> Result<Self> {
        let source = Source::parse(name);
        let bare = !name.starts_with("hf:") && !name.contains(['/', '\\', '.']);
        if matches!(source, Source::Checkpoint(_)) && bare && !Path::new(name).exists() {
            // Neither a variant nor a file: most likely a variant's name mistyped.
            return Err(Error::UnknownVariant {
                name: name.to_string(),
                known: VariantSpec::builtin().into_iter().map(|s| s.name).collect(),
            });
        }
        Self::open_with(source, OpenOptions::default())
    }

    /// Opens `source` as `options` say.
    ///
    /// # Errors
    /// As [`Pretrained::open`]; [`Error::Labels`] when `options.labels` cannot be read or its
    /// count is not the classifier's; [`Error::Checkpoint`] when `options.state_dict` is not
    /// in the file.
    pub fn open_with(source: impl Into<Source>, options: OpenOptions) -> Result<Self> {
        let loaded = load_with(&source.into(), &options)?;
        Ok(Self {
            transform: eval_transform(loaded.model.spec()),
            net: loaded.model,
            classes: loaded.classes,
            origin: loaded.origin,
            notices: loaded.notices,
            options,
        })
    }

    /// The network, for anything the façade does not cover ([`DenseNet::forward_t`],
    /// [`DenseNet::features_only`], ...).
    pub fn net(&self) -> &DenseNet {
        &self.net
    }

    /// The spec the network was built from, its `pretrained_cfg` included.
    pub fn spec(&self) -> &VariantSpec {
        self.net.spec()
    }

    /// The name of each output class, in the classifier's order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The evaluation preprocessing: resize, centre crop and normalisation from the
    /// checkpoint's or spec's `pretrained_cfg`.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Where the weights came from, for messages: a path, a hub file, the embedded default.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// What loading changed and the caller should know (adapted tensors, replaced class
    /// names).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.options.device
    }

    /// The `features_only` levels: name, channels and reduction of each.
    pub fn feature_info(&self) -> &[FeatureInfo] {
        self.net.feature_info()
    }

    /// One image as the network takes it: (C, S, S) floats after the evaluation transform.
    ///
    /// # Errors
    /// [`Error::Image`] naming the file when it cannot be read, is a folder, is not an image,
    /// is empty or too large.
    pub fn prepare<'a>(&self, image: impl Into<ImageInput<'a>>) -> Result<Vec<f32>> {
        match image.into() {
            ImageInput::File(path) if path.is_dir() => Err(Error::Image {
                path: Some(path.to_path_buf()),
                message: "is a folder, not an image: `data::images_under` lists the images under it".into(),
            }),
            ImageInput::File(path) => preprocess_file(path, &self.transform),
            ImageInput::Encoded(bytes) => preprocess_bytes(bytes.to_vec(), &self.transform),
            ImageInput::Image(image) => preprocess_image(image, &self.transform),
        }
    }

    /// Prepared images ([`Pretrained::prepare`]) as one batch (N, C, S, S) on the model's
    /// device.
    pub fn batch(&self, prepared: &[Vec<f32>]) -> Result<Tensor> {
        batch(prepared, &self.transform, self.device())
    }

    /// Batches of `size` images (at least 1), for calls that report progress.
    pub fn batches(&self, size: usize) -> Batches<'_, '_> {
        Batches {
            model: self,
            size: size.max(1),
            on_batch: None,
        }
    }

    /// The `k` most probable classes of each image, most probable first, with their labels and
    /// softmax probabilities (every class when the model has `k` or fewer); batches of
    /// [`DEFAULT_BATCH_SIZE`]. Image files are read as given: list a folder's images with
    /// [`data::images_under`](crate::data::images_under).
    ///
    /// # Errors
    /// [`Error::Setting`] for `k` = 0; [`Error::Image`] naming the first image that cannot be
    /// read; candle's errors.
    pub fn classify<'a, I: Into<ImageInput<'a>>>(
        &self,
        images: impl IntoIterator<Item = I>,
        k: usize,
    ) -> Result<Vec<Vec<Prediction>>> {
        self.batches(DEFAULT_BATCH_SIZE).classify(images, k)
    }

    /// [`Pretrained::classify`] on a batch already prepared (N, C, S, S).
    ///
    /// # Errors
    /// [`Error::Setting`] for `k` = 0; [`Error::BadInput`] for a tensor of the wrong shape.
    pub fn classify_tensor(&self, images: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
        check_k(k)?;
        top_k(&self.net.forward_t(images, false)?, &self.classes, k)
    }

    /// The pooled embedding of each image (N, F), the input of the classifier (timm's
    /// `forward_head(pre_logits=True)`); batches of [`DEFAULT_BATCH_SIZE`].
    ///
    /// # Errors
    /// As [`Pretrained::classify`].
    pub fn embed<'a, I: Into<ImageInput<'a>>>(&self, images: impl IntoIterator<Item = I>) -> Result<Tensor> {
        self.batches(DEFAULT_BATCH_SIZE).embed(images)
    }

    /// [`Pretrained::embed`] on a batch already prepared (N, C, S, S).
    ///
    /// # Errors
    /// [`Error::BadInput`] for a tensor of the wrong shape.
    pub fn embed_tensor(&self, images: &Tensor) -> Result<Tensor> {
        self.net
            .forward_head(&self.net.forward_features(images, false)?, true)
    }

    /// timm's `features_only`: one map per [`Pretrained::feature_info`] level for a batch
    /// (N, C, S, S), the stem's before its pool, then each dense block's output.
    ///
    /// # Errors
    /// [`Error::BadInput`] for a tensor of the wrong shape.
    pub fn features(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        self.net.features_only(images, false)
    }

    /// Class activation maps (N, h, w) of a batch (N, C, S, S) on the level named `level`
    /// (`block3`; `None` for the last), for `class`, by `method` (Grad-CAM or CAM).
    ///
    /// # Errors
    /// [`Error::Cam`] for a level the model does not have, a class out of range, CAM on any
    /// level but the last.
    pub fn class_activation_maps(
        &self,
        images: &Tensor,
        method: CamMethod,
        class: &CamClass,
        level: Option<&str>,
    ) -> Result<ClassActivationMaps> {
        let level = match level {
            Some(name) => self.net.level_index(name)?,
            None => self.net.feature_info().len() - 1,
        };
        self.net.class_activation_maps(images, method, class, level)
    }

    /// A run that fine-tunes these weights on the data set folder `data` (an ImageFolder,
    /// IDX or CIFAR folder), for [`Trainer::new`](crate::train::Trainer::new): the classifier
    /// gets one output per class of the data (kept when the counts agree), the images are
    /// resized to the model's input size, and everything up to the `feature_info` level
    /// `freeze` (`stem`, `block1` ... `blockN`, `features`) stays as loaded. The recipe is the
    /// variant's own, made for training from scratch (DenseNet-121: 90 epochs, batch 256, lr
    /// 0.1): set `config.recipe`'s epochs, lr and batch size for a fine-tune, as below; the
    /// data folder's layout is checked by [`Trainer::new`](crate::train::Trainer::new).
    ///
    /// ```no_run
    /// # use std::sync::atomic::AtomicBool;
    /// use densenet_zoo::{infer::Pretrained, train::Trainer};
    /// let model = Pretrained::open("121")?;
    /// let (mut config, start) = model.fine_tune("flowers/", Some("features"))?; // the head first
    /// config.recipe.epochs = 3;
    /// config.recipe.lr = 0.01; // not the from-scratch 0.1
    /// config.recipe.batch_size = 32;
    /// let device = model.device().clone();
    /// let mut trainer = Trainer::new(&config, "runs/flowers".as_ref(), &start, &device, &mut ())?;
    /// trainer.run(&AtomicBool::new(false), &mut ())?;
    /// # Ok::<(), densenet_zoo::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Data`] when `data` is not a folder; [`Error::Freeze`] for a level the model
    /// does not have; [`Error::Setting`] for the embedded default, which is loaded from memory, not from a file a run can start from.
    pub fn fine_tune(&self, data: impl Into<PathBuf>, freeze: Option<&str>) -> Result<(TrainConfig, Start)> {
        let data = data.into();
        if !data.is_dir() {
            return Err(Error::Data {
                path: data,
                message: "no such folder: the data set is a folder (an ImageFolder, IDX or CIFAR files)"
                    .into(),
            });
        }
        if let Some(level) = freeze {
            self.net.freeze_index(level)?;
        }
        // The origin names the file the weights came from (a path, `hf:REPO:FILE`), which a run
        // opens again; all but the embedded default's.
        if self.origin == DEFAULT_WEIGHTS_NAME {
            return Err(embedded_start(&self.origin));
        }
        let mut config = TrainConfig::new(self.spec().clone(), data);
        config.freeze = freeze.map(str::to_string);
        let start = Start {
            resume: false,
            weights: Some(self.origin.clone()),
            state_dict: self.options.state_dict.clone(),
        };
        Ok((config, start))
    }
}

/// Refuses a top-k of no class.
fn check_k(k: usize) -> Result<()> {
    match k {
        0 => Err(Error::Setting {
            field: "k".into(),
            value: "0".into(),
            message: "asks for no class: ask for at least 1".into(),
        }),
        _ => Ok(()),
    }
}

/// Why a run cannot start from the embedded default's weights.
fn embedded_start(origin: &str) -> Error {
    Error::Setting {
        field: "weights".into(),
        value: origin.into(),
        message: "is held in memory, not in a file a training run can start from: train the \
                  variant `d2l` from new weights, or fine-tune a checkpoint file"
            .into(),
    }
}

/// Batched calls of a [`Pretrained`] model, with a callback after each batch
/// ([`Batches::on_batch`]); from [`Pretrained::batches`].
pub struct Batches<'m, 'f> {
    model: &'m Pretrained,
    size: usize,
    on_batch: Option<Box<dyn FnMut(Progress) + 'f>>,
}

impl<'m, 'f> Batches<'m, 'f> {
    /// Calls `f` after each batch with how far the call has got: where a command line draws
    /// its progress bar.
    pub fn on_batch(mut self, f: impl FnMut(Progress) + 'f) -> Self {
        self.on_batch = Some(Box::new(f));
        self
    }

    /// Prepares `images` a batch at a time and calls `f` with each batch (n, C, S, S) and
    /// its first image's position, in order.
    ///
    /// # Errors
    /// [`Error::Image`] naming the first image that cannot be read, before its batch runs;
    /// `f`'s errors.
    pub fn for_each<'a, I: Into<ImageInput<'a>>>(
        mut self,
        images: impl IntoIterator<Item = I>,
        mut f: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<()> {
        let images: Vec<ImageInput<'a>> = images.into_iter().map(Into::into).collect();
        let total = images.len();
        for (i, chunk) in images.chunks(self.size).enumerate() {
            let prepared = chunk
                .iter()
                .map(|&image| self.model.prepare(image))
                .collect::<Result<Vec<_>>>()?;
            f(i * self.size, &self.model.batch(&prepared)?)?;
            if let Some(report) = self.on_batch.as_mut() {
                report(Progress {
                    done: i * self.size + chunk.len(),
                    total,
                });
            }
        }
        Ok(())
    }

    /// [`Pretrained::classify`] in these batches.
    ///
    /// # Errors
    /// As [`Pretrained::classify`].
    pub fn classify<'a, I: Into<ImageInput<'a>>>(
        self,
        images: impl IntoIterator<Item = I>,
        k: usize,
    ) -> Result<Vec<Vec<Prediction>>> {
        check_k(k)?;
        let model = self.model;
        let mut out = Vec::new();
        self.for_each(images, |_, x| {
            out.extend(model.classify_tensor(x, k)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Pretrained::embed`] in these batches: (N, F), or (0, F) for no image.
    ///
    /// # Errors
    /// As [`Pretrained::embed`].
    pub fn embed<'a, I: Into<ImageInput<'a>>>(self, images: impl IntoIterator<Item = I>) -> Result<Tensor> {
        let model = self.model;
        let mut rows = Vec::new();
        self.for_each(images, |_, x| {
            rows.push(model.embed_tensor(x)?);
            Ok(())
        })?;
        if rows.is_empty() {
            let features = model.spec().architecture.num_features();
            return Ok(Tensor::zeros(
                (0, features),
                candle_core::DType::F32,
                model.device(),
            )?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}
