//! Tabular data: the book's house-price task (Dive into Deep Learning 5.7) with dense
//! connectivity for fully connected layers (exercise 5 of its DenseNet chapter, 8.7).
//!
//! A CSV file ([`CsvTable`]) → its columns' roles and kinds ([`Schema`]) → the book's
//! preprocessing fitted on a training split ([`Preprocessor`]) → a net built from an
//! [`MlpSpec`] ([`DenseMlp`]) trained on the log target ([`fit`]) and scored by k-fold
//! log-RMSE ([`cross_validate`]) → a checkpoint with its preprocessing ([`TabularModel`]).

mod checkpoint;
mod dense_mlp;
mod fit;
mod preprocess;
mod spec;
mod table;

pub use checkpoint::{is_tabular, is_tabular_file, save, TabularModel};
pub use dense_mlp::DenseMlp;
pub use fit::{
    cross_validate, fit, fold_rows, log_rmse, predict_log, CrossValidation, FitOptions, FittedModel,
    FoldResult,
};
pub use preprocess::{ColumnKind, ColumnOptions, Encoded, FeatureColumn, Preprocessor, Schema};
pub use spec::{Connectivity, MlpSpec};
pub use table::{is_missing, parse_number, CsvTable};
