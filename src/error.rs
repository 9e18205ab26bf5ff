//! The library's error type: every failure names the file, the tensor, and the expected
//! and found value where there are such things.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A variant spec is malformed or describes a network that cannot work.
    #[error("variant spec {origin}: {message}")]
    Spec {
        /// Where the spec came from: a path, or the embedded file's name.
        origin: String,
        /// Why it was refused.
        message: String,
    },

    /// `--variant` named neither a built-in variant nor an existing file.
    #[error("unknown variant `{name}`: not a built-in variant ({}) and no such file", known.join(", "))]
    UnknownVariant {
        /// What the user asked for.
        name: String,
        /// The built-in names.
        known: Vec<String>,
    },

    /// A checkpoint could not be read, or does not fit the model.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file (or hub reference) it came from.
        path: String,
        /// Everything that is wrong with it.
        message: String,
    },

    /// An output cannot be written where it was asked for: checked before the work, so
    /// nothing was computed in vain.
    #[error("output {}: {message}", path.display())]
    Output {
        /// The file or folder to write.
        path: PathBuf,
        /// What is wrong with it: a missing folder, a file where a folder should be, a
        /// read-only file system.
        message: String,
    },

    /// A file of class names cannot be read, or does not fit the classifier.
    #[error("class names {}: {message}", path.display())]
    Labels {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A setting that cannot be used, named as the library names it (`batch_size`,
    /// `num_classes`, `freeze`), with its value and why. The library's messages name settings
    /// so, in backticks, and a command line maps them to its flags.
    #[error("`{field}`{} {message}", if value.is_empty() { String::new() } else { format!(" {value}") })]
    Setting {
        /// The field, as a run's configuration and its recipe name it.
        field: String,
        /// Its value, as given; empty for a switch.
        value: String,
        /// Why it cannot be used, and what would do.
        message: String,
    },

    /// An image that cannot be used: not an image, more pixels than PIL opens, empty, or a
    /// region or map that does not fit it.
    #[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Image {
        /// The image's file, where it came from one.
        path: Option<PathBuf>,
        /// What is wrong, with the sizes found.
        message: String,
    },

    /// A data set file or folder is malformed.
    #[error("data {}: {message}", path.display())]
    Data {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A CSV file of tabular data is malformed, or does not fit the model: the file, and where
    /// known the line (the header is line 1) and the column.
    #[error("{}{}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default(), column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The line of the file, where the error is in one.
        line: Option<u64>,
        /// The column's name, where the error is in one.
        column: Option<String>,
        /// What is wrong, with the value found and what was expected.
        message: String,
    },

    /// `--device` names no usable device.
    #[error("device `{name}`: {message}")]
    Device {
        /// What was asked for.
        name: String,
        /// Why it cannot be used.
        message: String,
    },

    /// An operation across the processes of a data-parallel run failed.
    #[error("distributed training: {0}")]
    Distributed(String),

    /// Training stopped: a non-finite loss, or an inconsistent resume.
    #[error("training: {0}")]
    Training(String),

    /// A class activation map was asked for a class, level or method the model cannot give.
    #[error("class activation map of {variant}: {message}")]
    Cam {
        /// The variant's name.
        variant: String,
        /// What was asked and what the model has.
        message: String,
    },

    /// A level to freeze that the model does not have.
    #[error("freezing {variant}: {message}")]
    Freeze {
        /// The variant's name.
        variant: String,
        /// What was asked and what the model has.
        message: String,
    },

    /// An input tensor does not fit the model.
    #[error("input of shape {found:?} does not fit {variant}: {message}")]
    BadInput {
        /// The variant's name.
        variant: String,
        /// The shape that was passed.
        found: Vec<usize>,
        /// What was expected.
        message: String,
    },
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// One field of a spec, a recipe or a checkpoint's metadata that breaks its rule, or the tensor
/// that does not fit one; what `validate` methods return, and what the callers that know where
/// the spec came from put in an [`Error::Spec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// The field as the JSON names it (`growth_rate`, `recipe.lr`, `block_config[2]`,
    /// `densenet_zoo.classes`), or the tensor's name.
    pub field: String,
    /// The whole sentence: the field, the value found and the rule it breaks.
    pub message: String,
}

impl FieldError {
    /// The error said by `message`, which starts with the field it is about
    /// (`growth_rate is 1000000000, ...`): the field is its first word.
    pub(crate) fn said(message: String) -> Self {
        let field: String = message
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
            .collect();
        Self { field, message }
    }

    /// The same error of a field inside `parent` (`recipe`): `recipe.lr must be ...`.
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            message: format!("{parent}.{}", self.message),
        }
    }

    /// The error of `field`, said by `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An [`Error::Image`] with no file: an image held in memory.
pub(crate) fn image_error(message: impl Into<String>) -> Error {
    Error::Image {
        path: None,
        message: message.into(),
    }
}
